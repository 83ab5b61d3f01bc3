"""Helpers shared by the dataset adapters: CSV reading, label encoding, image lookup and table assembly.

Every helper turns bad input into a one-line :class:`~trainables.errors.UserError` that names the file, the
line (1-based, the header is line 1) or the value, and what to do. CSVs are read as text
(``dtype=str, keep_default_na=False``) so empty fields are ``""`` and ids such as ``0012`` stay strings; the
line number of the row at position ``i`` is ``i + 2`` (blank lines, which pandas skips, are not counted).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trainables.data.schema import (
    MAX_AGE,
    MISSING_SEX,
    MISSING_SITE,
    MISSING_VALUES,
    SEX_CLASSES,
    SEX_VALUES,
    RawTable,
)
from trainables.errors import UserError, where

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def line(pos: int) -> int:
    """The 1-based line of the CSV row at position ``pos`` (the header is line 1)."""
    return int(pos) + 2


def require_file(root: Path, *names: str, what: str) -> Path:
    """The first of ``names`` (relative to ``root``) that exists; else say where it was expected."""
    for name in names:
        if (root / name).is_file():
            return root / name
    expected = " or ".join(str(root / name) for name in names)
    hint = "check the dataset root"
    for name in names:  # a common mistake: the root is one folder too high
        found = sorted(root.glob(f"*/{name}"))
        if found:
            hint = f"found {found[0]}: set the dataset root to {found[0].parent}"
            break
    raise UserError(f"{what} not found: expected {expected}; {hint}")


def load_csv(
    path: Path,
    required: Iterable[str] = (),
    hint: str = "use the release's original file or rename the columns",
) -> pd.DataFrame:
    """Read ``path`` as text with a default integer index; check it has rows and the ``required`` columns."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; check the path") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty; expected a CSV with a header line and one row per image") from None
    except pd.errors.ParserError as err:
        reason = str(err).strip().splitlines()[-1]
        raise UserError(f"{path}: not a valid CSV ({reason}); fix the file") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); save it as a UTF-8 CSV") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; the header has "
            f"{', '.join(map(repr, frame.columns))}; {hint}"
        )
    if frame.empty:
        raise UserError(f"{path}: has a header but no rows; expected one row per image")
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    return frame.reset_index(drop=True)


def check_ids(frame: pd.DataFrame, column: str, path: Path) -> None:
    """Every value of ``column`` (an image id or path) is non-empty and unique."""
    ids = frame[column]
    empty = np.flatnonzero((ids == "").to_numpy())
    if len(empty):
        raise UserError(f"{where(path, line(empty[0]), column)}: empty image id; fill it in or delete the row")
    dup = np.flatnonzero(ids.duplicated().to_numpy())
    if len(dup):
        value = ids.iloc[dup[0]]
        first = np.flatnonzero((ids == value).to_numpy())[0]
        raise UserError(
            f"{where(path, column=column)}: image id {value!r} is listed twice (lines {line(first)} and "
            f"{line(dup[0])}); remove one of the rows"
        )


def vocabulary(classes: Sequence[str]) -> dict[str, int]:
    """``{name: index}`` for a list of class names."""
    return {name: i for i, name in enumerate(classes)}


def encode(
    frame: pd.DataFrame,
    column: str,
    mapping: Mapping[str, int],
    path: Path,
    *,
    missing: Iterable[str] = (),
    ignore_case: bool = False,
) -> np.ndarray:
    """Map ``column`` through ``mapping`` (raw value → class index) to int64; ``missing`` values become -1.

    An unknown value raises a UserError naming the file, line, column, value and the allowed values.
    """
    missing = tuple(missing)
    table = {**dict(mapping), **dict.fromkeys(missing, MISSING_SITE)}
    values = frame[column]
    keys = values
    if ignore_case:
        table = {key.casefold(): code for key, code in table.items()}
        keys = values.str.casefold()
    codes = keys.map(table)
    bad = np.flatnonzero(codes.isna().to_numpy())
    if len(bad):
        allowed = ", ".join(repr(key) for key in mapping)
        if missing:
            allowed += f" (or {' / '.join(repr(m) if m else 'empty' for m in missing)} for missing)"
        more = f" ({len(bad)} rows have values outside the vocabulary)" if len(bad) > 1 else ""
        raise UserError(
            f"{where(path, line(bad[0]), column)}: unknown value {values.iloc[bad[0]]!r}{more}; "
            f"allowed: {allowed}; fix the row or the vocabulary"
        )
    return codes.to_numpy(dtype=np.int64)


def _image_of(frame: pd.DataFrame, id_column: str | None, pos: int) -> str:
    return f" (image {frame[id_column].iloc[pos]!r})" if id_column else ""


def parse_age(frame: pd.DataFrame, column: str | None, path: Path, id_column: str | None = None) -> np.ndarray:
    """The patient's age in years of each row as float64, NaN where it is missing (also when ``column`` is None or
    not in the file). A missing value (:data:`MISSING_VALUES`, any case) stays missing; a value that is not a
    number, or not between 0 and :data:`MAX_AGE`, raises a UserError naming the file, line, column and image."""
    if column is None or column not in frame.columns:
        return np.full(len(frame), np.nan)
    raw = frame[column]
    missing = raw.str.casefold().isin(MISSING_VALUES).to_numpy()
    values = pd.to_numeric(raw.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
    not_number = np.flatnonzero(~missing & ~np.isfinite(values))
    out_of_range = np.flatnonzero(~missing & np.isfinite(values) & ((values < 0) | (values > MAX_AGE)))
    for bad, what in [(not_number, "is not a number"), (out_of_range, f"is out of range (0 to {MAX_AGE:.0f} years)")]:
        if len(bad):
            more = f" ({len(bad)} rows have such ages)" if len(bad) > 1 else ""
            raise UserError(
                f"{where(path, line(bad[0]), column)}{_image_of(frame, id_column, bad[0])}: age "
                f"{raw.iloc[bad[0]]!r} {what}{more}; write the age in years (e.g. 45), or leave the cell empty "
                "where it is unknown"
            )
    return np.where(missing, np.nan, values)


def parse_sex(frame: pd.DataFrame, column: str | None, path: Path, id_column: str | None = None) -> np.ndarray:
    """The patient's sex of each row as int64: an index into :data:`SEX_CLASSES`, -1 where it is missing (also when
    ``column`` is None or not in the file). Values are matched ignoring case and blanks (:data:`SEX_VALUES`); a
    missing value (:data:`MISSING_VALUES`) stays missing; anything else raises a UserError naming the row."""
    if column is None or column not in frame.columns:
        return np.full(len(frame), MISSING_SEX, dtype=np.int64)
    raw = frame[column]
    table = {**SEX_VALUES, **dict.fromkeys(MISSING_VALUES, MISSING_SEX)}
    codes = raw.str.casefold().map(table)
    bad = np.flatnonzero(codes.isna().to_numpy())
    if len(bad):
        more = f" ({len(bad)} rows have values outside the vocabulary)" if len(bad) > 1 else ""
        raise UserError(
            f"{where(path, line(bad[0]), column)}{_image_of(frame, id_column, bad[0])}: unknown sex value "
            f"{raw.iloc[bad[0]]!r}{more}; allowed: {', '.join(map(repr, SEX_CLASSES))} (or 'f', 'm'; any case), "
            "or empty / 'unknown' where it is not recorded; fix the row"
        )
    return codes.to_numpy(dtype=np.int64)


class ImageFinder:
    """Finds an image by name: first in the ``dirs`` below ``root``, then (if ``search``) anywhere below it.

    A name without one of ``suffixes`` gets each suffix in turn. The search walks the tree once (one
    ``rglob``) and indexes files by full name and by stem; where two files share a name the first path in
    sorted order wins (some mirrors ship the same folder twice).
    """

    def __init__(
        self,
        root: Path,
        dirs: Sequence[str] = (),
        suffixes: Sequence[str] = IMAGE_SUFFIXES,
        search: bool = True,
    ):
        self.root, self.dirs, self.suffixes, self.search = root, tuple(dirs), tuple(suffixes), search
        self._index: dict[str, str] | None = None

    def _names(self, name: str) -> list[str]:
        if Path(name).suffix.lower() in self.suffixes:
            return [name]
        return [name + suffix for suffix in self.suffixes]

    def find(self, name: str) -> Path | None:
        for folder in self.dirs:
            for candidate in self._names(name):
                path = self.root / folder / candidate
                if path.is_file():
                    return path
        if not self.search:
            return None
        if self._index is None:
            self._index = {}  # plain strings, not Path objects: ~3x less memory for a large release
            files = sorted(
                (
                    os.path.join(folder, f)
                    for folder, _, names in os.walk(self.root)
                    for f in names
                    if os.path.splitext(f)[1].lower() in self.suffixes
                ),
                key=lambda path: path.split(os.sep),  # the order of sorted Paths: folder by folder
            )
            for file in files:
                base = os.path.basename(file)
                self._index.setdefault(base, file)
                self._index.setdefault(os.path.splitext(base)[0], file)
        found = self._index.get(name)
        return None if found is None else Path(found)

    def describe(self, name: str) -> str:
        """Where :meth:`find` looked for ``name``, for error messages."""
        places = [str(self.root / folder / self._names(name)[0]) for folder in self.dirs]
        if self.search:
            places.append(f"{self._names(name)[0]} anywhere under {self.root}")
        return " or ".join(places)


def resolve_images(frame: pd.DataFrame, column: str, path: Path, finder: ImageFinder) -> list[str]:
    """The absolute image path of each row; a UserError names the first missing image and the count."""
    found = [finder.find(name) for name in frame[column]]
    absent = [i for i, p in enumerate(found) if p is None]
    if absent:
        name = frame[column].iloc[absent[0]]
        count = f"; {len(absent)} of {len(found)} listed images are missing" if len(absent) > 1 else ""
        raise UserError(
            f"{where(path, line(absent[0]), column)}: image {name!r} not found (looked for "
            f"{finder.describe(name)}){count}; put the images there or point the dataset root at them"
        )
    return [os.path.abspath(p) for p in found if p is not None]


def choice(value: object, allowed: Sequence[str], option: str, fmt: str) -> str:
    """Check an enumerated option value."""
    if value not in allowed:
        raise UserError(
            f"format {fmt!r}: option {option}={value!r} is not one of {', '.join(map(repr, allowed))}; "
            "fix the data options"
        )
    return str(value)


def build_table(
    fmt: str,
    source_file: Path,
    *,
    image_id: Sequence[str],
    group_id: Sequence[str],
    lesion: np.ndarray,
    site: np.ndarray,
    source: str | Sequence[str],
    image_path: Sequence[str],
    lesion_classes: Sequence[str],
    site_classes: Sequence[str],
    options: dict,
    official_split: Sequence[str | None] | None = None,
    age: np.ndarray | None = None,
    sex: np.ndarray | None = None,
) -> RawTable:
    """Assemble a :class:`RawTable`; an empty group id becomes the image id; ``age``/``sex`` default to missing.

    ``frame.attrs["source_file"]`` records the metadata file, for ``RawTable.validate`` messages.
    """
    n = len(image_id)
    image_id = [str(i) for i in image_id]
    frame = pd.DataFrame(
        {
            "image_id": image_id,
            "group_id": [str(g) if g else i for g, i in zip(group_id, image_id, strict=True)],
            "lesion": np.asarray(lesion, dtype=np.int64),
            "site": np.asarray(site, dtype=np.int64),
            "age": np.full(n, np.nan) if age is None else np.asarray(age, dtype=np.float64),
            "sex": np.full(n, MISSING_SEX, dtype=np.int64) if sex is None else np.asarray(sex, dtype=np.int64),
            "source": [source] * n if isinstance(source, str) else list(source),
            "image_path": list(image_path),
            "official_split": pd.Series([None] * n if official_split is None else list(official_split), dtype=object),
        }
    )
    frame.attrs["source_file"] = str(source_file)
    return RawTable(frame, list(lesion_classes), list(site_classes), fmt, dict(options))
