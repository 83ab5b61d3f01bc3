"""derm7pt: ``meta/meta.csv`` (one row per case) + images under ``images/``, 5 grouped diagnoses, 9 sites.

- Option ``image``: ``"derm"`` (dermoscopic, default) or ``"clinic"``; that column holds the image path,
  relative to ``<root>/images/`` as in the release (relative to the root is accepted too). The path is also
  the image id (file names repeat across the release's sub-folders).
- Lesion classes: the 20 raw diagnoses grouped as in the authors' ``Derm7PtDatasetGroupInfrequent``
  (github.com/jeremykawahara/derm7pt), in their order BCC, NEV, MEL, MISC, SK (:data:`GROUPS`).
- Sites: the 9 ``location`` values in alphabetical order (:data:`SITE_CLASSES`, the authors' order too);
  none is missing in the release, an empty one would be (-1).
- Patient: ``sex`` (``female``/``male``; empty → missing); the release records no age (all missing).
- Group: ``case_num`` (a case is one lesion). Source: ``derm7pt``.
- Official split: ``meta/train_indexes.csv``, ``valid_indexes.csv``, ``test_indexes.csv`` (0-based row indexes
  of meta.csv in a column ``indexes``) where present; rows in none of them get no official split.
"""

from __future__ import annotations

from pathlib import Path

from trainables.data.adapters._common import (
    ImageFinder,
    build_table,
    check_ids,
    choice,
    encode,
    line,
    load_csv,
    parse_sex,
    require_file,
    resolve_images,
    vocabulary,
)
from trainables.data.schema import RawTable
from trainables.errors import UserError, where

METADATA = "meta/meta.csv"
GROUPS = {
    "BCC": ["basal cell carcinoma"],
    "NEV": [
        "nevus",
        "blue nevus",
        "clark nevus",
        "combined nevus",
        "congenital nevus",
        "dermal nevus",
        "recurrent nevus",
        "reed or spitz nevus",
    ],
    "MEL": [
        "melanoma",
        "melanoma (in situ)",
        "melanoma (less than 0.76 mm)",
        "melanoma (0.76 to 1.5 mm)",
        "melanoma (more than 1.5 mm)",
        "melanoma metastasis",
    ],
    "MISC": ["dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"],
    "SK": ["seborrheic keratosis"],
}
LESION_CLASSES = list(GROUPS)
DIAGNOSIS_TO_CLASS = {raw: i for i, raws in enumerate(GROUPS.values()) for raw in raws}
SITE_CLASSES = [
    "abdomen",
    "acral",
    "back",
    "buttocks",
    "chest",
    "genital areas",
    "head neck",
    "lower limbs",
    "upper limbs",
]
SPLIT_FILES = {
    "train": "meta/train_indexes.csv",
    "val": "meta/valid_indexes.csv",
    "test": "meta/test_indexes.csv",
}


def official_splits(root: Path, n_rows: int) -> list[str | None] | None:
    """The split of each meta.csv row from the index files, or None when there are none."""
    splits: list[str | None] = [None] * n_rows
    seen: dict[int, str] = {}
    present = [(split, root / name) for split, name in SPLIT_FILES.items() if (root / name).is_file()]
    for split, path in present:
        frame = load_csv(path, ["indexes"])
        for pos, value in enumerate(frame["indexes"]):
            if not value.isdigit() or int(value) >= n_rows:
                raise UserError(
                    f"{where(path, line(pos), 'indexes')}: {value!r} is not a row index of meta.csv "
                    f"(0 to {n_rows - 1}); use the index files of the same release"
                )
            index = int(value)
            if index in seen:
                raise UserError(
                    f"{where(path, line(pos), 'indexes')}: row {index} is already in the {seen[index]} "
                    "split; a case may be in one split only"
                )
            seen[index] = split
            splits[index] = split
    return splits if present else None


def read_derm7pt(root: Path, *, image: str = "derm") -> RawTable:
    image = choice(image, ("derm", "clinic"), "image", "derm7pt")
    path = require_file(root, METADATA, what="derm7pt metadata")
    frame = load_csv(path, ["case_num", "diagnosis", "location", image])
    check_ids(frame, image, path)
    finder = ImageFinder(root, dirs=["images", "."], search=False)
    return build_table(
        "derm7pt",
        path,
        image_id=frame[image],
        group_id=frame["case_num"],
        lesion=encode(frame, "diagnosis", DIAGNOSIS_TO_CLASS, path),
        site=encode(frame, "location", vocabulary(SITE_CLASSES), path, missing=("",)),
        sex=parse_sex(frame, "sex", path, image),
        source="derm7pt",
        image_path=resolve_images(frame, image, path, finder),
        lesion_classes=LESION_CLASSES,
        site_classes=SITE_CLASSES,
        options={"image": image},
        official_split=official_splits(root, len(frame)),
    )
