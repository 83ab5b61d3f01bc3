"""ISIC 2019 training set: one-hot ground truth + metadata (site, lesion id), 8 diagnoses.

Layout under the root: ``ISIC_2019_Training_GroundTruth.csv``, ``ISIC_2019_Training_Metadata.csv`` and
``ISIC_2019_Training_Input/<image>.jpg`` (found anywhere under the root if not there; some names end in
``_downsampled``, as in the CSVs).

- Lesion classes, in the ISIC column order: MEL, NV, BCC, AK, BKL, DF, VASC, SCC. ``UNK`` is appended only
  when some row marks it (it is all zeros in the training data, and an empty class would break balanced
  accuracy).
- Sites (:data:`SITE_CLASSES`, fixed so every ISIC-style dataset shares them): empty → missing (-1).
- Group: ``lesion_id``; an empty id (older images) makes the image its own group.
- Patient: ``age_approx`` (years in 5-year steps) and ``sex`` (``male``/``female``) from the metadata file; blank
  → missing. A metadata file without these columns gives all-missing values.
- Source: from the lesion id prefix (``BCN_`` → BCN_20000, ``HAM_`` → HAM10000, ``MSK`` → MSK), else isic2019.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainables.data.adapters._common import (
    ImageFinder,
    build_table,
    check_ids,
    encode,
    line,
    load_csv,
    parse_age,
    parse_sex,
    require_file,
    resolve_images,
    vocabulary,
)
from trainables.data.schema import RawTable
from trainables.errors import UserError, where

GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
IMAGE_DIR = "ISIC_2019_Training_Input"
LESION_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
SITE_CLASSES = [
    "anterior torso",
    "posterior torso",
    "lateral torso",
    "upper extremity",
    "lower extremity",
    "head/neck",
    "palms/soles",
    "oral/genital",
]
SOURCES = {"BCN_": "BCN_20000", "HAM_": "HAM10000", "MSK": "MSK"}


def onehot_labels(frame: pd.DataFrame, classes: list[str], path: Path) -> np.ndarray:
    """The class index of each row of a 0/1 one-hot block; a cell that is not 0 or 1, or a row without
    exactly one 1, is an error naming the line."""
    values = frame[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = np.argwhere(~np.isin(values, (0.0, 1.0)))
    if len(bad):
        row, col = bad[0]
        what = "not a number" if np.isnan(values[row, col]) else "neither 0 nor 1"
        raise UserError(
            f"{where(path, line(row), classes[col])}: {frame[classes[col]].iloc[row]!r} is {what}; "
            "one-hot cells must be 0.0 or 1.0"
        )
    counts = values.sum(axis=1)
    wrong = np.flatnonzero(counts != 1)
    if len(wrong):
        row = wrong[0]
        marked = [c for c, v in zip(classes, values[row], strict=True) if v == 1]
        what = f"several classes are marked 1 ({', '.join(marked)})" if marked else "no class is marked 1"
        raise UserError(f"{where(path, line(row))}: {what}; each image needs exactly one diagnosis")
    return values.argmax(axis=1).astype(np.int64)


def source_of(lesion_id: str) -> str:
    return next((name for prefix, name in SOURCES.items() if lesion_id.startswith(prefix)), "isic2019")


def read_isic2019(root: Path) -> RawTable:
    gt_path = require_file(root, GROUND_TRUTH, what="ISIC 2019 ground truth")
    meta_path = require_file(root, METADATA, what="ISIC 2019 metadata")
    gt = load_csv(gt_path, ["image", *LESION_CLASSES])
    check_ids(gt, "image", gt_path)
    classes = LESION_CLASSES + ["UNK"] if "UNK" in gt.columns else LESION_CLASSES
    lesion = onehot_labels(gt, classes, gt_path)
    if not (lesion == len(LESION_CLASSES)).any():
        classes = LESION_CLASSES  # UNK never used: keep the 8 real classes

    meta = load_csv(meta_path, ["image", "anatom_site_general"])
    check_ids(meta, "image", meta_path)
    site_all = encode(meta, "anatom_site_general", vocabulary(SITE_CLASSES), meta_path, missing=("",))
    age_all = parse_age(meta, "age_approx", meta_path, "image")
    sex_all = parse_sex(meta, "sex", meta_path, "image")
    pos = pd.Index(meta["image"]).get_indexer(gt["image"])
    absent = np.flatnonzero(pos < 0)
    if len(absent):
        image = gt["image"].iloc[absent[0]]
        raise UserError(
            f"{meta_path}: no row for image {image!r} (listed in {where(gt_path, line(absent[0]))}); "
            f"{len(absent)} ground-truth image(s) lack metadata; use the metadata file of the same release"
        )
    lesion_ids = meta["lesion_id"].to_numpy()[pos] if "lesion_id" in meta.columns else [""] * len(gt)

    finder = ImageFinder(root, dirs=[IMAGE_DIR], suffixes=(".jpg", ".jpeg", ".png"))
    return build_table(
        "isic2019",
        gt_path,
        image_id=gt["image"],
        group_id=lesion_ids,
        lesion=lesion,
        site=site_all[pos],
        age=age_all[pos],
        sex=sex_all[pos],
        source=[source_of(i) for i in lesion_ids],
        image_path=resolve_images(gt, "image", gt_path, finder),
        lesion_classes=classes,
        site_classes=SITE_CLASSES,
        options={},
    )
