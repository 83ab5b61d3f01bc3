"""Label vocabularies (trainables/data/vocab.py): each release's names onto ISIC 2019's, what does not map is
listed with the reason, and nothing is merged that the tables do not say."""

from __future__ import annotations

from trainables.data.adapters import derm7pt, ham10000, isic2019, isic2020, pad_ufes20
from trainables.data.vocab import ISIC2019_LESION, ISIC2019_SITES, isic_lesion, isic_site, map_classes


def test_lesion_tables_of_the_issue():
    ham = {n: isic_lesion(n, "ham10000") for n in ham10000.LESION_CLASSES}
    assert ham == {"akiec": "AK", "bcc": "BCC", "bkl": "BKL", "df": "DF", "mel": "MEL", "nv": "NV", "vasc": "VASC"}
    pad = {n: isic_lesion(n, "pad_ufes20") for n in pad_ufes20.LESION_CLASSES}
    assert pad == {"ACK": "AK", "BCC": "BCC", "MEL": "MEL", "NEV": "NV", "SCC": "SCC", "SEK": "BKL"}
    isic20 = {n: isic_lesion(n, "isic2020") for n in isic2020.DIAGNOSIS_CLASSES}
    assert {n for n, v in isic20.items() if v is None} == {
        "unknown",
        "lentigo NOS",
        "cafe-au-lait macule",
        "atypical melanocytic proliferation",
    }
    assert isic20["melanoma"] == "MEL" and isic20["nevus"] == "NV"
    assert isic_lesion("MISC", "derm7pt") is None and isic_lesion("SK", "derm7pt") == "BKL"
    assert all(isic_lesion(n, "isic2019") == n for n in isic2019.LESION_CLASSES)


def test_every_site_maps_into_isic_general_sites_or_nowhere():
    for fmt, classes in (
        ("ham10000", ham10000.SITE_CLASSES),
        ("pad_ufes20", pad_ufes20.SITE_CLASSES),
        ("isic2020", isic2020.SITE_CLASSES),
        ("derm7pt", derm7pt.SITE_CLASSES),
    ):
        for name in classes:
            assert isic_site(name, fmt) in (None, *ISIC2019_SITES), (fmt, name)
    assert isic_site("torso", "isic2020") is None and isic_site("trunk", "ham10000") is None
    assert isic_site("LIP", "pad_ufes20") is None and isic_site("BACK", "pad_ufes20") == "posterior torso"


def test_pad_onto_an_isic2019_model_lists_nothing_left_out_and_ham_onto_pad_lists_df_and_vasc():
    mapping = map_classes(pad_ufes20.LESION_CLASSES, list(ISIC2019_LESION), "pad_ufes20")
    assert mapping.left_out == {}
    assert {pad_ufes20.LESION_CLASSES[i]: ISIC2019_LESION[j] for i, j in mapping.index.items()} == {
        "ACK": "AK",
        "BCC": "BCC",
        "MEL": "MEL",
        "NEV": "NV",
        "SCC": "SCC",
        "SEK": "BKL",
    }
    back = map_classes(ham10000.LESION_CLASSES, pad_ufes20.LESION_CLASSES, "ham10000")
    assert back.left_out == {"df": "the model has no class DF", "vasc": "the model has no class VASC"}
    assert back.via["nv"] == "NEV" and back.lookup(7) == [0, 1, 5, -1, 2, 3, -1]


def test_isic2020_onto_isic2019_and_a_model_with_two_bkl_classes():
    mapping = map_classes(isic2020.DIAGNOSIS_CLASSES, list(ISIC2019_LESION), "isic2020")
    assert set(mapping.left_out) == {
        "unknown",
        "lentigo NOS",
        "cafe-au-lait macule",
        "atypical melanocytic proliferation",
    }
    assert mapping.left_out["unknown"] == "no ISIC 2019 equivalent"
    # a model trained on ISIC 2020 diagnoses has three classes that are BKL: an ISIC 2019 BKL cannot go to one
    ambiguous = map_classes(list(ISIC2019_LESION), isic2020.DIAGNOSIS_CLASSES, "isic2019")
    assert ambiguous.left_out["BKL"] == "several model classes map to BKL"
    assert ambiguous.via == {"MEL": "melanoma", "NV": "nevus"}


def test_site_mapping_ham_onto_isic_sites():
    mapping = map_classes(ham10000.SITE_CLASSES, list(ISIC2019_SITES), "ham10000", kind="site")
    assert mapping.via["back"] == "posterior torso" and mapping.via["acral"] == "palms/soles"
    assert set(mapping.left_out) == {"genital", "trunk"}
