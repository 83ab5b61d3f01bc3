"""The dataset adapters on tiny fixtures with each release's exact headers and quirks (see conftest.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import AGE_SEX, CSV_PATIENT
from trainables.data.adapters import FORMATS, option_names, read_dataset
from trainables.data.schema import RAW_COLUMNS
from trainables.errors import UserError


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"fixture has no {old!r}"
    path.write_text(text.replace(old, new, count))


def check_common(table) -> None:
    frame = table.frame
    assert tuple(frame.columns) == RAW_COLUMNS
    assert str(frame["lesion"].dtype) == "int64" and str(frame["site"].dtype) == "int64"
    assert str(frame["age"].dtype) == "float64" and str(frame["sex"].dtype) == "int64"
    for path in frame["image_path"]:
        assert Path(path).is_absolute() and Path(path).is_file()


# ISIC 2019 ------------------------------------------------------------------------------------------------
def test_isic2019_reads_labels_sites_groups_and_sources(make_root):
    table = read_dataset("isic2019", make_root("isic2019"))
    check_common(table)
    assert table.lesion_classes == [
        "MEL",
        "NV",
        "BCC",
        "AK",
        "BKL",
        "DF",
        "VASC",
        "SCC",
    ]  # UNK unused: dropped
    assert table.site_classes[:3] == ["anterior torso", "posterior torso", "lateral torso"]
    assert len(table.site_classes) == 8
    frame = table.frame.set_index("image_id")
    assert len(frame) == 8  # the metadata-only image is ignored
    assert list(frame["lesion"]) == [1, 0, 2, 7, 0, 0, 4, 5]
    assert frame.loc["ISIC_0000001", "site"] == -1
    assert frame.loc["ISIC_0000005", "site"] == table.site_classes.index("lower extremity")
    assert frame.loc["ISIC_0000002_downsampled", "image_path"].endswith("ISIC_0000002_downsampled.jpg")
    assert frame.loc["ISIC_0000000", "group_id"] == "ISIC_0000000"  # empty lesion_id
    assert frame.loc["ISIC_0000004", "group_id"] == frame.loc["ISIC_0000005", "group_id"] == "BCN_0000001"
    assert list(frame["source"]) == ["isic2019"] * 4 + ["BCN_20000", "BCN_20000", "HAM10000", "MSK"]
    assert frame["official_split"].isna().all()


def test_isic2019_keeps_unk_when_used(make_root):
    root = make_root("isic2019")
    edit(root / "ISIC_2019_Training_GroundTruth.csv", "ISIC_0000003,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0",
         "ISIC_0000003,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0")  # fmt: skip
    table = read_dataset("isic2019", root)
    assert table.lesion_classes[-1] == "UNK" and len(table.lesion_classes) == 9
    assert table.frame.set_index("image_id").loc["ISIC_0000003", "lesion"] == 8


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", r"line 5: no class is marked 1"),
        ("1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", r"line 5: several classes are marked 1 \(MEL, NV\)"),
        ("yes,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", r"line 5 column 'MEL': 'yes' is not a number"),
        ("0.5,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0", r"line 5 column 'MEL': '0.5' is neither 0 nor 1"),
    ],
)
def test_isic2019_bad_onehot(make_root, row, message):
    root = make_root("isic2019")
    gt = root / "ISIC_2019_Training_GroundTruth.csv"
    edit(gt, "ISIC_0000003,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,0.0", f"ISIC_0000003,{row}")
    with pytest.raises(UserError, match=re.escape(str(gt)) + ".*" + message):
        read_dataset("isic2019", root)


def test_isic2019_image_without_metadata(make_root):
    root = make_root("isic2019")
    edit(root / "ISIC_2019_Training_Metadata.csv", "ISIC_0000006,", "ISIC_0000666,")
    with pytest.raises(UserError, match=r"Metadata.csv: no row for image 'ISIC_0000006' .*GroundTruth.csv line 8"):
        read_dataset("isic2019", root)


def test_isic2019_unknown_site(make_root):
    root = make_root("isic2019")
    edit(root / "ISIC_2019_Training_Metadata.csv", "palms/soles", "elbow")
    with pytest.raises(UserError, match=r"Metadata.csv line 3 column 'anatom_site_general': unknown value 'elbow'"):
        read_dataset("isic2019", root)


def test_isic2019_missing_files_and_columns(make_root):
    root = make_root("isic2019")
    gt = root / "ISIC_2019_Training_GroundTruth.csv"
    edit(gt, ",SCC,", ",SCX,")
    with pytest.raises(UserError, match=re.escape(str(gt)) + r": missing column\(s\) 'SCC'"):
        read_dataset("isic2019", root)
    (root / "ISIC_2019_Training_Metadata.csv").unlink()
    with pytest.raises(UserError, match=r"ISIC 2019 metadata not found: expected .*ISIC_2019_Training_Metadata.csv"):
        read_dataset("isic2019", root)
    with pytest.raises(UserError, match=r"set the dataset root to .*isic2019"):
        read_dataset("isic2019", root.parent)  # one level too high


def test_isic2019_empty_csvs(make_root):
    root = make_root("isic2019")
    gt = root / "ISIC_2019_Training_GroundTruth.csv"
    gt.write_text("")
    with pytest.raises(UserError, match=re.escape(str(gt)) + ": the file is empty"):
        read_dataset("isic2019", root)
    gt.write_text("image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n")
    with pytest.raises(UserError, match=re.escape(str(gt)) + ": has a header but no rows"):
        read_dataset("isic2019", root)


def test_isic2019_duplicate_image(make_root):
    root = make_root("isic2019")
    gt = root / "ISIC_2019_Training_GroundTruth.csv"
    edit(gt, "ISIC_0000005,", "ISIC_0000001,")
    with pytest.raises(UserError, match=r"GroundTruth.csv column 'image': image id 'ISIC_0000001' .*lines 3 and 7"):
        read_dataset("isic2019", root)


def test_isic2019_missing_images_are_counted(make_root):
    root = make_root("isic2019")
    folder = root / "ISIC_2019_Training_Input"
    (folder / "ISIC_0000003.jpg").unlink()
    (folder / "ISIC_0000006.jpg").unlink()
    expected = re.escape(str(folder / "ISIC_0000003.jpg"))
    with pytest.raises(UserError, match=rf"line 5 column 'image': image 'ISIC_0000003' not found .*{expected}.*2 of 8"):
        read_dataset("isic2019", root)


# ISIC 2020 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["kaggle", "isic_v2"])
def test_isic2020_layouts(make_root, layout):
    table = read_dataset("isic2020", make_root("isic2020", layout=layout))
    check_common(table)
    assert table.lesion_classes[:3] == ["unknown", "nevus", "melanoma"] and len(table.lesion_classes) == 9
    assert table.site_classes == ["torso", "lower extremity", "upper extremity", "head/neck", "palms/soles",
                                  "oral/genital"]  # fmt: skip
    frame = table.frame
    assert list(frame["lesion"]) == [1, 2, 0, 4, 3]
    assert list(frame["site"]) == [0, -1, 3, 4, 5]
    assert list(frame["group_id"]) == ["IP_0000001", "IP_0000001", "IP_0000002", "IP_0000003", "IP_0000003"]
    assert all(p.endswith(".jpg") for p in frame["image_path"])  # not the DICOMs in train/
    assert set(frame["source"]) == {"isic2020"}
    assert table.options == {"label": "diagnosis"}


def test_isic2020_target_label(make_root):
    table = read_dataset("isic2020", make_root("isic2020"), {"label": "target"})
    assert table.lesion_classes == ["benign", "melanoma"]
    assert list(table.frame["lesion"]) == [0, 1, 0, 0, 0]


def test_isic2020_errors(make_root):
    root = make_root("isic2020")
    with pytest.raises(UserError, match=r"option label='dx' is not one of 'diagnosis', 'target'"):
        read_dataset("isic2020", root, {"label": "dx"})
    edit(root / "train.csv", "lentigo NOS", "freckle")
    with pytest.raises(UserError, match=r"train.csv line 5 column 'diagnosis': unknown value 'freckle'.*'nevus'"):
        read_dataset("isic2020", root)
    (root / "train.csv").unlink()
    with pytest.raises(UserError, match=r"train.csv or .*GroundTruth_v2.csv or .*GroundTruth.csv"):
        read_dataset("isic2020", root)


# HAM10000 -------------------------------------------------------------------------------------------------
def test_ham10000_reads_both_image_folders_and_dataset_column(make_root):
    table = read_dataset("ham10000", make_root("ham10000"))
    check_common(table)
    assert table.lesion_classes == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert len(table.site_classes) == 14 and "unknown" not in table.site_classes
    frame = table.frame
    assert list(frame["lesion"]) == [2, 2, 4, 5, 0, 3, 6]
    sites = ["scalp", "scalp", "unknown", "back", "trunk", "acral", "genital"]
    assert list(frame["site"]) == [table.site_classes.index(s) if s != "unknown" else -1 for s in sites]
    assert frame["group_id"].iloc[0] == frame["group_id"].iloc[1] == "HAM_0000118"
    assert frame["group_id"].iloc[6] == "ISIC_0024310"  # empty lesion id
    assert list(frame["source"])[4:] == ["vienna_dermatology", "ham10000", "rosendahl"]
    assert {Path(p).parent.name for p in frame["image_path"]} == {
        "HAM10000_images_part_1",
        "HAM10000_images_part_2",
    }


def test_ham10000_harmonized_sites_and_seven_columns(make_root):
    table = read_dataset("ham10000", make_root("ham10000", dataset_column=False), {"harmonize_sites": True})
    assert table.site_classes[0] == "anterior torso" and len(table.site_classes) == 8
    names = [table.site_classes[s] if s >= 0 else None for s in table.frame["site"]]
    assert names == ["head/neck", "head/neck", None, "posterior torso", None, "palms/soles", None]
    assert set(table.frame["source"]) == {"ham10000"}


def test_ham10000_errors(make_root):
    root = make_root("ham10000")
    with pytest.raises(UserError, match="harmonize_sites='yes' must be true or false"):
        read_dataset("ham10000", root, {"harmonize_sites": "yes"})
    meta = root / "HAM10000_metadata.csv"
    edit(meta, ",nv,", ",naevus,")
    with pytest.raises(UserError, match=r"metadata.csv line 5 column 'dx': unknown value 'naevus'; allowed: 'akiec'"):
        read_dataset("ham10000", root)
    edit(meta, ",localization", ",site")
    with pytest.raises(UserError, match=r"HAM10000_metadata.csv: missing column\(s\) 'localization'"):
        read_dataset("ham10000", root)


# derm7pt --------------------------------------------------------------------------------------------------
def test_derm7pt_groups_diagnoses_and_reads_official_split(make_root):
    table = read_dataset("derm7pt", make_root("derm7pt"))
    check_common(table)
    assert table.lesion_classes == ["BCC", "NEV", "MEL", "MISC", "SK"]
    assert len(table.site_classes) == 9
    frame = table.frame
    assert list(frame["lesion"]) == [0, 1, 2, 4, 3, 1]
    assert [table.site_classes[s] for s in frame["site"]] == [
        "abdomen", "back", "head neck", "lower limbs", "acral", "genital areas"]  # fmt: skip
    assert list(frame["official_split"]) == ["train", "train", "val", "train", "test", None]
    assert list(frame["group_id"]) == ["1", "2", "3", "4", "5", "6"]
    assert frame["image_path"].iloc[0].endswith("images/NEL/Nel025.jpg")


def test_derm7pt_clinic_images_without_index_files(make_root):
    table = read_dataset("derm7pt", make_root("derm7pt", index_files=False), {"image": "clinic"})
    assert table.frame["image_id"].iloc[0] == "NEL/Nel026.jpg"
    assert table.frame["official_split"].isna().all()
    assert table.options == {"image": "clinic"}


def test_derm7pt_accepts_paths_relative_to_root(make_root):
    root = make_root("derm7pt")
    (root / "images" / "NEL").rename(root / "NEL")
    table = read_dataset("derm7pt", root)
    assert table.frame["image_path"].iloc[0] == str(root / "NEL" / "Nel025.jpg")


def test_derm7pt_bad_index_files(make_root):
    root = make_root("derm7pt")
    valid = root / "meta" / "valid_indexes.csv"
    valid.write_text("indexes\n1\n")
    with pytest.raises(UserError, match=r"valid_indexes.csv line 2 column 'indexes': row 1 is already in the train"):
        read_dataset("derm7pt", root)
    valid.write_text("indexes\n60\n")
    with pytest.raises(UserError, match=r"valid_indexes.csv line 2 column 'indexes': '60' is not a row index"):
        read_dataset("derm7pt", root)


def test_derm7pt_unknown_diagnosis_and_missing_image(make_root):
    root = make_root("derm7pt")
    (root / "images" / "Gal" / "Gal003.jpg").unlink()
    with pytest.raises(UserError, match=r"meta.csv line 6 column 'derm': image 'Gal/Gal003.jpg' not found"):
        read_dataset("derm7pt", root)
    edit(root / "meta" / "meta.csv", "clark nevus", "nevus of clark")
    with pytest.raises(UserError, match=r"meta.csv line 3 column 'diagnosis': unknown value 'nevus of clark'"):
        read_dataset("derm7pt", root)


# PAD-UFES-20 ----------------------------------------------------------------------------------------------
def test_pad_ufes20(make_root):
    table = read_dataset("pad_ufes20", make_root("pad_ufes20"))
    check_common(table)
    assert table.lesion_classes == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
    assert len(table.site_classes) == 14 and table.site_classes[0] == "ABDOMEN"
    frame = table.frame
    assert list(frame["lesion"]) == [3, 1, 0, 2, 4, 5]
    assert [table.site_classes[s] for s in frame["site"]] == ["ARM", "NECK", "FACE", "CHEST", "LIP", "BACK"]
    assert frame["image_id"].iloc[0] == "PAT_1516_1765_530"
    assert frame["group_id"].iloc[1] == frame["group_id"].iloc[2] == "PAT_46"
    assert all(p.endswith(".png") for p in frame["image_path"])


def test_pad_ufes20_missing_image(make_root):
    root = make_root("pad_ufes20")
    (root / "images" / "imgs_part_2" / "PAT_725_1394_93.png").unlink()
    with pytest.raises(UserError, match=r"metadata.csv line 6 column 'img_id': image 'PAT_725_1394_93.png' not"):
        read_dataset("pad_ufes20", root)


# generic CSV ----------------------------------------------------------------------------------------------
CSV_OPTIONS = {"file": "labels.csv", "image_dir": "pictures", "extension": ".jpg"}


def test_csv_defaults_sorted_vocabularies(make_root):
    table = read_dataset("csv", make_root("csv"), CSV_OPTIONS)
    check_common(table)
    assert table.lesion_classes == ["keratosis", "melanoma", "nevus"]
    assert table.site_classes == ["back", "face", "leg"]
    assert list(table.frame["lesion"]) == [1, 2, 2, 0]
    assert list(table.frame["site"]) == [0, -1, 1, 2]
    assert list(table.frame["group_id"]) == ["a1", "a2", "b1", "c1"]
    assert set(table.frame["source"]) == {"csv"}


def test_csv_options(make_root):
    root = make_root("csv")
    options = {**CSV_OPTIONS, "site_column": None, "group_column": "patient", "source_column": "source",
               "lesion_classes": ["nevus", "melanoma", "keratosis"]}  # fmt: skip
    table = read_dataset("csv", root, options)
    assert table.site_classes == [] and set(table.frame["site"]) == {-1}
    assert list(table.frame["lesion"]) == [1, 0, 0, 2]
    assert list(table.frame["group_id"]) == ["p1", "p1", "p2", "c1"]
    assert list(table.frame["source"]) == ["clinic_a", "clinic_a", "csv", "clinic_b"]
    assert table.options["lesion_classes"] == ["nevus", "melanoma", "keratosis"]


def test_csv_split_column_and_absolute_paths(make_root):
    root = make_root("csv")
    rows = [f"{root / 'pictures' / name}.jpg,nevus,{split}" for name, split in [("a1", "train"), ("b1", "")]]
    (root / "abs.csv").write_text("path,dx,split\n" + "\n".join(rows) + "\n")
    options = {"file": str(root / "abs.csv"), "image_column": "path", "lesion_column": "dx",
               "site_column": None, "split_column": "split"}  # fmt: skip
    table = read_dataset("csv", root, options)
    assert list(table.frame["official_split"]) == ["train", None]


def test_csv_errors(make_root):
    root = make_root("csv")
    with pytest.raises(UserError, match="needs the option file"):
        read_dataset("csv", root, {})
    with pytest.raises(UserError, match=r"labels.csv line 5 column 'lesion': unknown value 'keratosis'"):
        read_dataset("csv", root, {**CSV_OPTIONS, "lesion_classes": ["nevus", "melanoma"]})
    with pytest.raises(UserError, match=r"labels.csv: missing column\(s\) 'diagnosis'"):
        read_dataset("csv", root, {**CSV_OPTIONS, "lesion_column": "diagnosis"})
    with pytest.raises(UserError, match=r"labels.csv line 2 column 'image': image 'a1' not found .*a1.jpg"):
        read_dataset("csv", root, {"file": "labels.csv", "extension": ".jpg"})  # images are in pictures/
    (root / "labels.csv").write_text("image,lesion,site\na1,nevus,back\na1,nevus,back\n")
    with pytest.raises(UserError, match=r"image id 'a1' is listed twice \(lines 2 and 3\)"):
        read_dataset("csv", root, CSV_OPTIONS)
    (root / "labels.csv").write_text('image,lesion,site\na1,nevus,back,extra\n"a2,nevus\n')
    with pytest.raises(UserError, match=r"labels.csv: not a valid CSV"):
        read_dataset("csv", root, CSV_OPTIONS)


# patient age and sex ---------------------------------------------------------------------------------------
PATIENT_OPTIONS = {"csv": {**CSV_OPTIONS, **CSV_PATIENT}}


@pytest.mark.parametrize("fmt", sorted(AGE_SEX))
def test_age_and_sex_read_with_each_release_quirks(make_root, fmt):
    """Blank, ``unknown``, ``Unknown`` and ``NaN`` stay missing (never imputed); ``MALE``, ``M``, `` female `` are
    read ignoring case and blanks; derm7pt has no age at all."""
    table = read_dataset(fmt, make_root(fmt), PATIENT_OPTIONS.get(fmt, {}))
    age, sex = AGE_SEX[fmt]
    np.testing.assert_array_equal(table.frame["age"].to_numpy(), np.array(age, dtype=float))  # NaN == NaN here
    assert list(table.frame["sex"]) == sex


def test_csv_without_patient_columns_has_them_all_missing(make_root):
    table = read_dataset("csv", make_root("csv"), CSV_OPTIONS)
    assert table.frame["age"].isna().all() and set(table.frame["sex"]) == {-1}
    assert table.options["age_column"] is None and table.options["sex_column"] is None


def test_isic2019_metadata_without_age_and_sex_columns(make_root):
    """A trimmed metadata file (no age_approx, no sex) still reads: every value is missing."""
    root = make_root("isic2019")
    meta = root / "ISIC_2019_Training_Metadata.csv"
    lines = [line.split(",") for line in meta.read_text().splitlines()]
    meta.write_text("\n".join(",".join([f[0], f[2], f[3]]) for f in lines) + "\n")
    table = read_dataset("isic2019", root)
    assert table.frame["age"].isna().all() and set(table.frame["sex"]) == {-1}


BAD_PATIENT = [  # format, file, old text, new text, expected message (regex)
    ("isic2019", "ISIC_2019_Training_Metadata.csv", "ISIC_0000002_downsampled,85.0", "ISIC_0000002_downsampled,-3",
     r"Metadata.csv line 7 column 'age_approx' \(image 'ISIC_0000002_downsampled'\): age '-3' is out of range "
     r"\(0 to 120 years\); write the age in years"),
    ("isic2019", "ISIC_2019_Training_Metadata.csv", "ISIC_0000005,60.0,lower extremity,BCN_0000001,male",
     "ISIC_0000005,60.0,lower extremity,BCN_0000001,unknwn",
     r"Metadata.csv line 4 column 'sex' \(image 'ISIC_0000005'\): unknown sex value 'unknwn'; allowed: 'female', "
     r"'male'"),
    ("isic2020", "train.csv", "male,45.0,torso", "male,300,torso",
     r"train.csv line 2 column 'age_approx' \(image 'ISIC_2000001'\): age '300' is out of range"),
    ("ham10000", "HAM10000_metadata.csv", "histo,75.0,unknown", "histo,seventy,unknown",
     r"HAM10000_metadata.csv line 6 column 'age' \(image 'ISIC_0029176'\): age 'seventy' is not a number"),
    ("ham10000", "HAM10000_metadata.csv", "histo,45.0,male", "histo,45.0,mal",
     r"HAM10000_metadata.csv line 8 column 'sex' \(image 'ISIC_0024310'\): unknown sex value 'mal'"),
    ("derm7pt", "meta/meta.csv", "head neck,male", "head neck,x",
     r"meta.csv line 4 column 'sex' \(image 'Fal/Fal003.jpg'\): unknown sex value 'x'"),
    ("pad_ufes20", "metadata.csv", "POMERANIA,79,False,FEMALE", "POMERANIA,-1,False,FEMALE",
     r"metadata.csv line 6 column 'age' \(image 'PAT_725_1394_93.png'\): age '-1' is out of range"),
    ("pad_ufes20", "metadata.csv", "POMERANIA,8,False,FEMALE", "POMERANIA,8,False,OTHER",
     r"metadata.csv line 2 column 'gender' \(image 'PAT_1516_1765_530.png'\): unknown sex value 'OTHER'"),
    ("csv", "labels.csv", "clinic_b,64.5,", "clinic_b,121,",
     r"labels.csv line 5 column 'age_years' \(image 'c1'\): age '121' is out of range"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "file", "old", "new", "message"), BAD_PATIENT)
def test_impossible_age_or_sex_names_file_row_and_fix(make_root, fmt, file, old, new, message):
    root = make_root(fmt)
    edit(root / file, old, new)
    with pytest.raises(UserError, match=message) as info:
        read_dataset(fmt, root, PATIENT_OPTIONS.get(fmt, {}))
    assert "\n" not in str(info.value) and str(root / file) in str(info.value)


def test_several_bad_ages_are_counted(make_root):
    root = make_root("ham10000")
    edit(root / "HAM10000_metadata.csv", "histo,60.0,male", "histo,600.0,male", count=2)
    with pytest.raises(UserError, match=r"line 2 column 'age' .*'600.0' is out of range .*\(2 rows have such ages\)"):
        read_dataset("ham10000", root)


def test_csv_patient_column_not_in_header(make_root):
    with pytest.raises(UserError, match=r"labels.csv: missing column\(s\) 'age'.*set the csv options \*_column"):
        read_dataset("csv", make_root("csv"), {**CSV_OPTIONS, "age_column": "age"})
    with pytest.raises(UserError, match=r"option sex_column=3 must be a column name"):
        read_dataset("csv", make_root("csv"), {**CSV_OPTIONS, "sex_column": 3})


# read_dataset ---------------------------------------------------------------------------------------------
def test_read_dataset_rejects_bad_format_options_and_root(make_root, tmp_path):
    assert set(FORMATS) == {"isic2019", "isic2020", "ham10000", "derm7pt", "pad_ufes20", "csv"}
    assert option_names("isic2020") == ["label"] and option_names("pad_ufes20") == []
    with pytest.raises(UserError, match=r"unknown dataset format 'isic2018'; known formats: isic2019, isic2020"):
        read_dataset("isic2018", tmp_path)
    with pytest.raises(UserError, match=r"format 'ham10000': unknown option\(s\) 'harmonise'.*harmonize_sites"):
        read_dataset("ham10000", make_root("ham10000"), {"harmonise": True})
    with pytest.raises(UserError, match=r"unknown option\(s\) 'label'; valid options: none"):
        read_dataset("pad_ufes20", tmp_path, {"label": "x"})
    with pytest.raises(UserError, match=r"nowhere: dataset root not found"):
        read_dataset("pad_ufes20", tmp_path / "nowhere")
