"""PAD-UFES-20: ``metadata.csv`` (26 columns) + smartphone PNGs in ``images/`` or under ``imgs_part_*/``.

- Lesion classes: the ``diagnostic`` codes in alphabetical order, :data:`LESION_CLASSES`.
- Sites: the 14 ``region`` values in alphabetical order, :data:`SITE_CLASSES` (empty → missing).
- Patient: ``age`` and ``gender`` (``MALE``/``FEMALE``; blank → missing).
- Image id: ``img_id`` without its ``.png``. Group: ``patient_id``. Source: ``pad_ufes20``.
"""

from __future__ import annotations

from pathlib import Path

from trainables.data.adapters._common import (
    ImageFinder,
    build_table,
    check_ids,
    encode,
    load_csv,
    parse_age,
    parse_sex,
    require_file,
    resolve_images,
    vocabulary,
)
from trainables.data.schema import RawTable

METADATA = "metadata.csv"
LESION_CLASSES = ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
SITE_CLASSES = [
    "ABDOMEN",
    "ARM",
    "BACK",
    "CHEST",
    "EAR",
    "FACE",
    "FOOT",
    "FOREARM",
    "HAND",
    "LIP",
    "NECK",
    "NOSE",
    "SCALP",
    "THIGH",
]


def read_pad_ufes20(root: Path) -> RawTable:
    path = require_file(root, METADATA, what="PAD-UFES-20 metadata")
    frame = load_csv(path, ["patient_id", "region", "diagnostic", "img_id"])
    check_ids(frame, "img_id", path)
    finder = ImageFinder(root, dirs=["images"], suffixes=(".png", ".jpg", ".jpeg"))
    return build_table(
        "pad_ufes20",
        path,
        image_id=[Path(name).stem if name.lower().endswith(".png") else name for name in frame["img_id"]],
        group_id=frame["patient_id"],
        lesion=encode(frame, "diagnostic", vocabulary(LESION_CLASSES), path),
        site=encode(frame, "region", vocabulary(SITE_CLASSES), path, missing=("",)),
        age=parse_age(frame, "age", path, "img_id"),
        sex=parse_sex(frame, "gender", path, "img_id"),
        source="pad_ufes20",
        image_path=resolve_images(frame, "img_id", path, finder),
        lesion_classes=LESION_CLASSES,
        site_classes=SITE_CLASSES,
        options={},
    )
