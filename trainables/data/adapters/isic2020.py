"""ISIC 2020 (SIIM-ISIC) training set: 9 diagnoses or melanoma vs benign, 6 general sites.

Accepted layouts under the root (the first CSV found wins):

- Kaggle: ``train.csv`` with images in ``jpeg/train/`` or ``train/`` (``train/`` also holds DICOMs, skipped);
- ISIC: ``ISIC_2020_Training_GroundTruth_v2.csv`` (adds ``lesion_id``) or
  ``ISIC_2020_Training_GroundTruth.csv`` with images in ``ISIC_2020_Training_JPEG/`` or ``train/``.

Images not in those folders are looked for anywhere under the root.

- Option ``label``: ``"diagnosis"`` (default; :data:`DIAGNOSIS_CLASSES`, ordered by training-set frequency;
  ``unknown`` is a benign lesion without a specific diagnosis, a class, not a missing label; matched ignoring
  case) or ``"target"`` (the binary column: ``["benign", "melanoma"]``).
- Sites: :data:`SITE_CLASSES`; empty → missing (-1). Group: ``patient_id``. Source: ``isic2020``.
- Patient: ``age_approx`` and ``sex``; blank or ``NaN`` → missing.
"""

from __future__ import annotations

from pathlib import Path

from trainables.data.adapters._common import (
    ImageFinder,
    build_table,
    check_ids,
    choice,
    encode,
    load_csv,
    parse_age,
    parse_sex,
    require_file,
    resolve_images,
    vocabulary,
)
from trainables.data.schema import RawTable

LAYOUTS = {  # metadata file -> image folders, in order of preference
    "train.csv": ("jpeg/train", "train"),
    "ISIC_2020_Training_GroundTruth_v2.csv": (
        "ISIC_2020_Training_JPEG",
        "ISIC_2020_Training_JPEG/train",
        "train",
    ),
    "ISIC_2020_Training_GroundTruth.csv": (
        "ISIC_2020_Training_JPEG",
        "ISIC_2020_Training_JPEG/train",
        "train",
    ),
}
DIAGNOSIS_CLASSES = [
    "unknown",
    "nevus",
    "melanoma",
    "seborrheic keratosis",
    "lentigo NOS",
    "lichenoid keratosis",
    "solar lentigo",
    "cafe-au-lait macule",
    "atypical melanocytic proliferation",
]
TARGET_CLASSES = ["benign", "melanoma"]
SITE_CLASSES = ["torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital"]
SITE_COLUMN = "anatom_site_general_challenge"


def read_isic2020(root: Path, *, label: str = "diagnosis") -> RawTable:
    label = choice(label, ("diagnosis", "target"), "label", "isic2020")
    path = require_file(root, *LAYOUTS, what="ISIC 2020 training metadata")
    frame = load_csv(path, ["image_name", "patient_id", SITE_COLUMN, label])
    check_ids(frame, "image_name", path)
    if label == "target":
        classes = TARGET_CLASSES
        lesion = encode(frame, "target", {"0": 0, "1": 1, "0.0": 0, "1.0": 1}, path)
    else:
        classes = DIAGNOSIS_CLASSES
        lesion = encode(frame, "diagnosis", vocabulary(classes), path, ignore_case=True)
    site = encode(frame, SITE_COLUMN, vocabulary(SITE_CLASSES), path, missing=("",))
    finder = ImageFinder(root, dirs=LAYOUTS[path.name], suffixes=(".jpg", ".jpeg", ".png"))
    return build_table(
        "isic2020",
        path,
        image_id=frame["image_name"],
        group_id=frame["patient_id"],
        lesion=lesion,
        site=site,
        age=parse_age(frame, "age_approx", path, "image_name"),
        sex=parse_sex(frame, "sex", path, "image_name"),
        source="isic2020",
        image_path=resolve_images(frame, "image_name", path, finder),
        lesion_classes=classes,
        site_classes=SITE_CLASSES,
        options={"label": label},
    )
