"""Fixture writers: tiny copies of each public release, with its exact headers and quirks (as each
adapter's module docstring describes them), written into ``tmp_path``. ``make_root(fmt, **kw)`` returns the root.

Patient age and sex use each release's own column names and ways of saying "unknown" (a blank cell, ``unknown``,
``NaN``) and spelling (``MALE`` in PAD-UFES-20); ``AGE_SEX`` holds the values the adapters must read from them,
in each fixture's row order (NaN / -1 = missing; sex 0 = female, 1 = male)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

NAN = float("nan")


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (180, 120, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


JPEG = _encoded("JPEG")
PNG = _encoded("PNG")


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def write_images(folder: Path, names: list[str], data: bytes = JPEG) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


# ISIC 2019 ------------------------------------------------------------------------------------------------
ISIC2019_GT_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
ISIC2019_META_HEADER = "image,age_approx,anatom_site_general,lesion_id,sex"
ISIC2019_ROWS = [  # image, class, site, lesion_id
    ("ISIC_0000000", "NV", "anterior torso", ""),
    ("ISIC_0000001", "MEL", "", ""),
    ("ISIC_0000002_downsampled", "BCC", "head/neck", ""),
    ("ISIC_0000003", "SCC", "posterior torso", "IL_0000003"),
    ("ISIC_0000004", "MEL", "anterior torso", "BCN_0000001"),
    ("ISIC_0000005", "MEL", "lower extremity", "BCN_0000001"),
    ("ISIC_0000006", "BKL", "palms/soles", "HAM_0000001"),
    ("ISIC_0000007", "DF", "oral/genital", "MSK4_0000001"),
]
ISIC2019_PATIENT = [  # age_approx, sex (the release: 5-year steps, blank when unknown)
    ("55.0", "female"),
    ("", ""),
    ("85.0", "male"),
    ("70.0", ""),
    ("", "male"),
    ("60.0", "male"),
    ("5.0", "female"),
    ("40.0", "female"),
]


def onehot(cls: str, classes: str = ISIC2019_GT_HEADER) -> str:
    return ",".join("1.0" if c == cls else "0.0" for c in classes.split(",")[1:])


def write_isic2019(root: Path) -> Path:
    write_csv(
        root / "ISIC_2019_Training_GroundTruth.csv",
        ISIC2019_GT_HEADER,
        [f"{image},{onehot(cls)}" for image, cls, _, _ in ISIC2019_ROWS],
    )
    rows = [(*row, *patient) for row, patient in zip(ISIC2019_ROWS, ISIC2019_PATIENT, strict=True)]
    meta = [f"{image},{age},{site},{lesion},{sex}" for image, _, site, lesion, age, sex in reversed(rows)]
    meta.append("ISIC_9999999,30.0,anterior torso,,male")  # metadata of an image not in the ground truth
    write_csv(root / "ISIC_2019_Training_Metadata.csv", ISIC2019_META_HEADER, meta)
    write_images(root / "ISIC_2019_Training_Input", [f"{r[0]}.jpg" for r in ISIC2019_ROWS])
    return root


# ISIC 2020 ------------------------------------------------------------------------------------------------
ISIC2020_ROWS = [  # image, patient, site, diagnosis, target
    ("ISIC_2000001", "IP_0000001", "torso", "nevus", "0"),
    ("ISIC_2000002", "IP_0000001", "", "melanoma", "1"),
    ("ISIC_2000003", "IP_0000002", "head/neck", "unknown", "0"),
    ("ISIC_2000004", "IP_0000003", "palms/soles", "lentigo NOS", "0"),
    ("ISIC_2000005", "IP_0000003", "oral/genital", "seborrheic keratosis", "0"),
]
ISIC2020_PATIENT = [  # sex, age_approx (blank or NaN when unknown)
    ("male", "45.0"),
    ("male", "45.0"),
    ("", ""),
    ("female", "NaN"),
    ("NaN", "70.0"),
]


def write_isic2020(root: Path, layout: str = "kaggle") -> Path:
    """``kaggle``: train.csv + jpeg/train/ (and DICOMs in train/); ``isic_v2``: the ISIC v2 ground truth."""
    rows = []
    for (image, patient, site, dx, target), (sex, age) in zip(ISIC2020_ROWS, ISIC2020_PATIENT, strict=True):
        benign = "malignant" if target == "1" else "benign"
        lesion = f"IL_{image[-4:]}," if layout == "isic_v2" else ""
        rows.append(f"{image},{patient},{lesion}{sex},{age},{site},{dx},{benign},{target}")
    if layout == "kaggle":
        header = "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target"
        write_csv(root / "train.csv", header, rows)
        write_images(root / "jpeg" / "train", [f"{r[0]}.jpg" for r in ISIC2020_ROWS])
        write_images(root / "train", [f"{r[0]}.dcm" for r in ISIC2020_ROWS], b"DICM")
    else:
        header = (
            "image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
            "benign_malignant,target"
        )
        write_csv(root / "ISIC_2020_Training_GroundTruth_v2.csv", header, rows)
        write_images(root / "ISIC_2020_Training_JPEG", [f"{r[0]}.jpg" for r in ISIC2020_ROWS])
    return root


# HAM10000 -------------------------------------------------------------------------------------------------
HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"
HAM_ROWS = [  # lesion, image, dx, localization, dataset
    ("HAM_0000118", "ISIC_0027419", "bkl", "scalp", "vidir_modern"),
    ("HAM_0000118", "ISIC_0025030", "bkl", "scalp", "vidir_modern"),
    ("HAM_0002730", "ISIC_0026769", "mel", "unknown", "rosendahl"),
    ("HAM_0001466", "ISIC_0031633", "nv", "back", "vidir_molemax"),
    ("HAM_0002761", "ISIC_0029176", "akiec", "trunk", "vienna_dermatology"),
    ("HAM_0005132", "ISIC_0025837", "df", "acral", ""),
    ("", "ISIC_0024310", "vasc", "genital", "rosendahl"),
]
HAM_PATIENT = [  # age (blank when unknown; some are 0), sex (male / female / unknown)
    ("60.0", "male"),
    ("60.0", "male"),
    ("", "unknown"),
    ("0.0", "female"),
    ("75.0", "unknown"),
    ("", "female"),
    ("45.0", "male"),
]


def write_ham10000(root: Path, dataset_column: bool = True) -> Path:
    header = HAM_HEADER + (",dataset" if dataset_column else "")
    rows = [
        f"{lesion},{image},{dx},histo,{age},{sex},{site}" + (f",{ds}" if dataset_column else "")
        for (lesion, image, dx, site, ds), (age, sex) in zip(HAM_ROWS, HAM_PATIENT, strict=True)
    ]
    write_csv(root / "HAM10000_metadata.csv", header, rows)
    images = [f"{r[1]}.jpg" for r in HAM_ROWS]
    write_images(root / "HAM10000_images_part_1", images[:4])
    write_images(root / "HAM10000_images_part_2", images[4:])
    return root


# derm7pt --------------------------------------------------------------------------------------------------
DERM7PT_HEADER = (
    "case_num,diagnosis,seven_point_score,pigment_network,streaks,pigmentation,regression_structures,"
    "dots_and_globules,blue_whitish_veil,vascular_structures,level_of_diagnostic_difficulty,elevation,location,"
    "sex,management,clinic,derm,case_id,notes"
)
DERM7PT_ROWS = [  # case, diagnosis, location, clinic, derm
    ("1", "basal cell carcinoma", "abdomen", "NEL/Nel026.jpg", "NEL/Nel025.jpg"),
    ("2", "clark nevus", "back", "Aal/Aal002.jpg", "Aal/Aal001.jpg"),
    ("3", "melanoma (in situ)", "head neck", "Fal/Fal004.jpg", "Fal/Fal003.jpg"),
    ("4", "seborrheic keratosis", "lower limbs", "Gal/Gal002.jpg", "Gal/Gal001.jpg"),
    ("5", "dermatofibroma", "acral", "Gal/Gal004.jpg", "Gal/Gal003.jpg"),
    ("6", "reed or spitz nevus", "genital areas", "Fgl/Fgl002.jpg", "Fgl/Fgl001.jpg"),
]
DERM7PT_SEX = ["female", "male", "male", "female", "", "female"]  # no age in the release


def write_derm7pt(root: Path, index_files: bool = True) -> Path:
    rows = [
        f"{case},{dx},0,absent,absent,absent,absent,absent,absent,absent,low,flat,{site},{sex},excision,"
        f"{clinic},{derm},,"
        for (case, dx, site, clinic, derm), sex in zip(DERM7PT_ROWS, DERM7PT_SEX, strict=True)
    ]
    write_csv(root / "meta" / "meta.csv", DERM7PT_HEADER, rows)
    if index_files:  # row 5 (index) is in no split
        write_csv(root / "meta" / "train_indexes.csv", "indexes", ["0", "1", "3"])
        write_csv(root / "meta" / "valid_indexes.csv", "indexes", ["2"])
        write_csv(root / "meta" / "test_indexes.csv", "indexes", ["4"])
    write_images(root / "images", [name for row in DERM7PT_ROWS for name in row[3:]])
    return root


# PAD-UFES-20 ----------------------------------------------------------------------------------------------
PAD_HEADER = (
    "patient_id,lesion_id,smoke,drink,background_father,background_mother,age,pesticide,gender,"
    "skin_cancer_history,cancer_history,has_piped_water,has_sewage_system,fitspatrick,region,diameter_1,"
    "diameter_2,diagnostic,itch,grew,hurt,changed,bleed,elevation,img_id,biopsed"
)
PAD_ROWS = [  # patient, lesion, region, diagnostic, img_id
    ("PAT_1516", "1765", "ARM", "NEV", "PAT_1516_1765_530.png"),
    ("PAT_46", "881", "NECK", "BCC", "PAT_46_881_939.png"),
    ("PAT_46", "882", "FACE", "ACK", "PAT_46_882_940.png"),
    ("PAT_1545", "1867", "CHEST", "MEL", "PAT_1545_1867_547.png"),
    ("PAT_725", "1394", "LIP", "SCC", "PAT_725_1394_93.png"),
    ("PAT_1989", "4061", "BACK", "SEK", "PAT_1989_4061_934.png"),
]
PAD_PATIENT = [("8", "FEMALE"), ("55", "MALE"), ("55", "MALE"), ("", ""), ("79", "FEMALE"), ("63", "")]  # age, gender


def write_pad_ufes20(root: Path) -> Path:
    rows = [
        f"{patient},{lesion},False,False,POMERANIA,POMERANIA,{age},False,{gender},True,True,True,True,3.0,{region},"
        f"6.0,5.0,{dx},True,False,False,False,False,False,{img},True"
        for (patient, lesion, region, dx, img), (age, gender) in zip(PAD_ROWS, PAD_PATIENT, strict=True)
    ]
    write_csv(root / "metadata.csv", PAD_HEADER, rows)
    names = [r[4] for r in PAD_ROWS]
    write_images(root / "images" / "imgs_part_1", names[:3], PNG)
    write_images(root / "images" / "imgs_part_2", names[3:], PNG)
    return root


# generic CSV ----------------------------------------------------------------------------------------------
def write_csv_dataset(root: Path) -> Path:
    rows = [
        "a1,melanoma,back,p1,clinic_a,71,M",
        "a2,nevus,,p1,clinic_a,unknown, female ",
        "b1,nevus,face,p2,,,Unknown",
        "c1,keratosis,leg,,clinic_b,64.5,",
    ]
    write_csv(root / "labels.csv", "image,lesion,site,patient,source,age_years,Sex", rows)
    write_images(root / "pictures", [f"{r.split(',')[0]}.jpg" for r in rows])
    return root


CSV_PATIENT = {"age_column": "age_years", "sex_column": "Sex"}  # the csv options that read them

AGE_SEX: dict[str, tuple[list[float], list[int]]] = {  # what each adapter must read, in row order
    "isic2019": ([55, NAN, 85, 70, NAN, 60, 5, 40], [0, -1, 1, -1, 1, 1, 0, 0]),
    "isic2020": ([45, 45, NAN, NAN, 70], [1, 1, -1, 0, -1]),
    "ham10000": ([60, 60, NAN, 0, 75, NAN, 45], [1, 1, -1, 0, -1, 0, 1]),
    "derm7pt": ([NAN] * 6, [0, 1, 1, 0, -1, 0]),
    "pad_ufes20": ([8, 55, 55, NAN, 79, 63], [0, 1, 1, -1, 0, -1]),
    "csv": ([71, NAN, NAN, 64.5], [1, 0, -1, -1]),
}


WRITERS: dict[str, Callable[..., Path]] = {
    "isic2019": write_isic2019,
    "isic2020": write_isic2020,
    "ham10000": write_ham10000,
    "derm7pt": write_derm7pt,
    "pad_ufes20": write_pad_ufes20,
    "csv": write_csv_dataset,
}


@pytest.fixture
def make_root(tmp_path: Path) -> Callable[..., Path]:
    """``make_root("ham10000", dataset_column=False)`` writes that fixture dataset and returns its root."""

    def make(fmt: str, **kwargs) -> Path:
        return WRITERS[fmt](tmp_path / fmt, **kwargs)

    return make
