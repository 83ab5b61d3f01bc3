"""HAM10000: ``HAM10000_metadata.csv`` + ``<image_id>.jpg`` anywhere under the root (usually split over
``HAM10000_images_part_1/`` and ``HAM10000_images_part_2/``), 7 diagnoses.

- Lesion classes: the ``dx`` codes in alphabetical order, :data:`LESION_CLASSES`.
- Sites: the 14 ``localization`` values in alphabetical order (:data:`SITE_CLASSES`); ``unknown`` → missing.
  Option ``harmonize_sites=True`` maps them onto the ISIC 2019 general sites (the ISIC 2019 vocabulary, so
  tables from both datasets share site indexes) with ISIC's own mapping (:data:`TO_ISIC_SITE`); ``trunk``,
  ``genital`` and ``unknown`` become missing because they have no unambiguous general site.
- Patient: ``age`` (blank → missing) and ``sex`` (``male``/``female``; ``unknown`` → missing).
- Group: ``lesion_id`` (empty → the image). Source: the optional 8th column ``dataset`` (e.g.
  ``vidir_modern``) when present and non-empty, else ``ham10000``.
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
from trainables.data.adapters.isic2019 import SITE_CLASSES as ISIC_SITE_CLASSES
from trainables.data.schema import RawTable
from trainables.errors import UserError

METADATA = "HAM10000_metadata.csv"
LESION_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
SITE_CLASSES = [
    "abdomen",
    "acral",
    "back",
    "chest",
    "ear",
    "face",
    "foot",
    "genital",
    "hand",
    "lower extremity",
    "neck",
    "scalp",
    "trunk",
    "upper extremity",
]
MISSING = "unknown"
TO_ISIC_SITE = {
    "back": "posterior torso",
    "abdomen": "anterior torso",
    "chest": "anterior torso",
    "face": "head/neck",
    "neck": "head/neck",
    "scalp": "head/neck",
    "ear": "head/neck",
    "foot": "lower extremity",
    "lower extremity": "lower extremity",
    "hand": "upper extremity",
    "upper extremity": "upper extremity",
    "acral": "palms/soles",
}


def read_ham10000(root: Path, *, harmonize_sites: bool = False) -> RawTable:
    if not isinstance(harmonize_sites, bool):
        raise UserError(f"format 'ham10000': option harmonize_sites={harmonize_sites!r} must be true or false")
    path = require_file(root, METADATA, what="HAM10000 metadata")
    frame = load_csv(path, ["lesion_id", "image_id", "dx", "localization"])
    check_ids(frame, "image_id", path)
    lesion = encode(frame, "dx", vocabulary(LESION_CLASSES), path)
    site = encode(frame, "localization", vocabulary(SITE_CLASSES), path, missing=(MISSING,))
    site_classes = SITE_CLASSES
    if harmonize_sites:
        site_classes = ISIC_SITE_CLASSES
        isic = vocabulary(site_classes)
        mapping = {name: isic[TO_ISIC_SITE[name]] if name in TO_ISIC_SITE else -1 for name in SITE_CLASSES}
        site = encode(frame, "localization", mapping, path, missing=(MISSING,))
    source: str | list[str] = "ham10000"
    if "dataset" in frame.columns:
        source = [value or "ham10000" for value in frame["dataset"]]
    return build_table(
        "ham10000",
        path,
        image_id=frame["image_id"],
        group_id=frame["lesion_id"],
        lesion=lesion,
        site=site,
        age=parse_age(frame, "age", path, "image_id"),
        sex=parse_sex(frame, "sex", path, "image_id"),
        source=source,
        image_path=resolve_images(frame, "image_id", path, ImageFinder(root, suffixes=(".jpg", ".jpeg", ".png"))),
        lesion_classes=LESION_CLASSES,
        site_classes=site_classes,
        options={"harmonize_sites": harmonize_sites},
    )
