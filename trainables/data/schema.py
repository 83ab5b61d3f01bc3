"""The canonical dataset table every adapter produces (docs/design.md, "Prepared data").

An adapter reads a public release into a :class:`RawTable`: one row per image with integer labels, the path of
the original image and, where the dataset ships one, its official split. ``prepare`` then splits, decodes,
resizes and writes the Parquet shards with the canonical columns (``image`` holding encoded bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trainables.errors import UserError

MISSING_SITE = -1
SPLITS = ("train", "val", "test")

# Columns of a RawTable frame (adapter output) and of a prepared shard.
RAW_COLUMNS = ("image_id", "group_id", "lesion", "site", "source", "image_path", "official_split")
SHARD_COLUMNS = ("image_id", "group_id", "lesion", "site", "split", "source", "image")


@dataclass
class RawTable:
    """What an adapter returns.

    ``frame`` has the columns of :data:`RAW_COLUMNS`: ``lesion`` indexes ``lesion_classes``; ``site`` indexes
    ``site_classes`` or is -1 when missing; ``image_path`` is an absolute path that exists; ``official_split`` is
    ``train``/``val``/``test`` where the release defines one, else ``None``.
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
