"""The canonical dataset table every adapter produces (docs/design.md, "Prepared data").

An adapter reads a public release into a :class:`RawTable`: one row per image with integer labels, the patient's
age and sex where the release records them, the path of the original image and, where the dataset ships one, its
official split. ``prepare`` then splits, decodes, resizes and writes the Parquet shards with the canonical columns
(``image`` holding encoded bytes).

Patient metadata, in canonical form (missing values stay missing: never imputed):

- ``age``: float years, ``NaN`` = missing (a blank cell, ``unknown``, ``NaN``...; see :data:`MISSING_VALUES`).
  A value that cannot be an age (not a number, below 0 or above :data:`MAX_AGE`) is an error naming the row.
- ``sex``: a small integer, the index into :data:`SEX_CLASSES` (0 = female, 1 = male), :data:`MISSING_SEX` (-1) =
  missing. The raw value is matched ignoring case and surrounding blanks (``male``, ``MALE``, ``m``...; see
  :data:`SEX_VALUES`); anything else (a typo such as ``unknwn``) is an error naming the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trainables.errors import UserError

MISSING_SITE = -1
MISSING_SEX = -1
SEX_CLASSES = ("female", "male")
# Raw sex values (after strip + casefold) -> index into SEX_CLASSES.
SEX_VALUES = {"female": 0, "f": 0, "male": 1, "m": 1}
# Raw cell values (after strip + casefold) that mean "not recorded", for age and sex alike.
MISSING_VALUES = ("", "unknown", "nan", "na", "n/a", "none", "null")
MAX_AGE = 120.0
SPLITS = ("train", "val", "test")
# The patient metadata fields dataset.json reports on (``metadata``): the body site and the two above.
METADATA_FIELDS = ("site", "age", "sex")

# Columns of a RawTable frame (adapter output) and of a prepared shard. Shards prepared before ``age`` and ``sex``
# existed lack those two columns: readers treat every value as missing there (trainables/data/loader.py).
RAW_COLUMNS = ("image_id", "group_id", "lesion", "site", "age", "sex", "source", "image_path", "official_split")
SHARD_COLUMNS = ("image_id", "group_id", "lesion", "site", "age", "sex", "split", "source", "image")


@dataclass
class RawTable:
    """What an adapter returns.

    ``frame`` has the columns of :data:`RAW_COLUMNS`: ``lesion`` indexes ``lesion_classes``; ``site`` indexes
    ``site_classes`` or is -1 when missing; ``age`` (float64, NaN = missing) and ``sex`` (int64, an index into
    :data:`SEX_CLASSES` or -1) as in the module docstring, all missing where the release has no such field;
    ``image_path`` is an absolute path that exists; ``official_split`` is ``train``/``val``/``test`` where the
    release defines one, else ``None``.
    """

    frame: pd.DataFrame
    lesion_classes: list[str]
    site_classes: list[str]
    format: str
    options: dict = field(default_factory=dict)

    def validate(self, source: str | Path) -> None:
        """Check the invariants every adapter promises; ``source`` names the file for error messages."""
        missing = [c for c in RAW_COLUMNS if c not in self.frame.columns]
        if missing:
            raise UserError(f"{source}: adapter produced no column(s) {missing} (a bug in the adapter)")
        if self.frame.empty:
            raise UserError(f"{source}: no images listed; check --root and the metadata file")
        dup = self.frame["image_id"][self.frame["image_id"].duplicated()]
        if not dup.empty:
            raise UserError(
                f"{source}: image id {dup.iloc[0]!r} is listed more than once ({len(dup)} duplicates); "
                "remove the duplicate rows"
            )
        lesion = self.frame["lesion"]
        if ((lesion < 0) | (lesion >= len(self.lesion_classes))).any():
            raise UserError(f"{source}: lesion label out of range (a bug in the adapter)")
        site = self.frame["site"]
        if ((site < MISSING_SITE) | (site >= len(self.site_classes))).any():
            raise UserError(f"{source}: site label out of range (a bug in the adapter)")
        age = self.frame["age"]
        if ((age < 0) | (age > MAX_AGE)).any():  # NaN (missing) compares False
            raise UserError(f"{source}: age out of range (a bug in the adapter)")
        if not self.frame["sex"].isin([MISSING_SEX, *range(len(SEX_CLASSES))]).all():
            raise UserError(f"{source}: sex code out of range (a bug in the adapter)")
