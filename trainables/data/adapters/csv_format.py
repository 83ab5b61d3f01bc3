"""A generic CSV (an in-house dataset): one row per image with an image, a diagnosis and optionally a site.

Options (all keyword, see :func:`read_csv`):

- ``file`` (required): the CSV, relative to the root or absolute.
- ``image_column`` ("image"): the image id; the file is ``<image_dir>/<value><extension>`` (an absolute
  value is used as is). ``image_dir`` defaults to the root (relative paths are relative to the root);
  ``extension`` ("") is appended unless the value already ends with it.
- ``lesion_column`` ("lesion"), ``site_column`` ("site"; ``None`` = no site: every site missing, no site
  classes). An empty site is missing; an empty diagnosis is an error.
- ``lesion_classes`` / ``site_classes``: the vocabulary in a fixed order; default: the sorted distinct values.
- ``group_column`` (None): lesion or patient id; empty or no column → the image is its own group.
- ``age_column`` (None): the patient's age in years; ``sex_column`` (None): ``female``/``male`` (or ``f``/``m``,
  any case). Empty, ``unknown`` or ``NaN`` → missing; no column → every value missing.
- ``source_column`` (None): the dataset part of each image (empty → "csv"); ``split_column`` (None): an
  official split, ``train``/``val``/``test`` or empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainables.data.adapters._common import (
    ImageFinder,
    build_table,
    check_ids,
    encode,
    load_csv,
    parse_age,
    parse_sex,
    resolve_images,
    vocabulary,
)
from trainables.data.schema import SPLITS, RawTable
from trainables.errors import UserError


def _check_names(option: str, value: object, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        raise UserError(f"format 'csv': option {option}={value!r} must be a column name")


def _classes(option: str, given: Sequence[str] | None, values: Sequence[str]) -> list[str]:
    if given is None:
        return sorted({v for v in values if v})
    if not isinstance(given, (list, tuple)) or not all(isinstance(c, str) and c for c in given):
        raise UserError(f"format 'csv': option {option} must be a list of class names, got {given!r}")
    if len(set(given)) != len(given):
        raise UserError(f"format 'csv': option {option} lists a class twice: {list(given)!r}")
    return list(given)


def read_csv(
    root: Path,
    *,
    file: str | None = None,
    image_column: str = "image",
    lesion_column: str = "lesion",
    site_column: str | None = "site",
    group_column: str | None = None,
    source_column: str | None = None,
    split_column: str | None = None,
    age_column: str | None = None,
    sex_column: str | None = None,
    image_dir: str | None = None,
    extension: str = "",
    lesion_classes: list[str] | None = None,
    site_classes: list[str] | None = None,
) -> RawTable:
    if not file or not isinstance(file, str):
        raise UserError("format 'csv' needs the option file: the CSV listing the images (relative to the root)")
    _check_names("image_column", image_column, allow_none=False)
    _check_names("lesion_column", lesion_column, allow_none=False)
    for option, value in [("site_column", site_column), ("group_column", group_column)]:
        _check_names(option, value)
    for option, value in [("source_column", source_column), ("split_column", split_column)]:
        _check_names(option, value)
    for option, value in [("age_column", age_column), ("sex_column", sex_column)]:
        _check_names(option, value)
    if not isinstance(extension, str):
        raise UserError(f"format 'csv': option extension={extension!r} must be a string such as '.jpg'")
    path = root / Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: CSV not found; check the csv option file (relative to the root {root})")
    named = (
        image_column,
        lesion_column,
        site_column,
        group_column,
        source_column,
        split_column,
        age_column,
        sex_column,
    )
    columns = [c for c in named if c]
    hint = "set the csv options *_column to names in the header (site_column: null when there is no site)"
    frame = load_csv(path, columns, hint)
    check_ids(frame, image_column, path)
    n = len(frame)

    lesion_classes = _classes("lesion_classes", lesion_classes, frame[lesion_column])
    lesion = encode(frame, lesion_column, vocabulary(lesion_classes), path)
    if site_column is None:
        site_classes, site = [], np.full(n, -1, dtype=np.int64)
    else:
        site_classes = _classes("site_classes", site_classes, frame[site_column])
        site = encode(frame, site_column, vocabulary(site_classes), path, missing=("",))
    split = None
    if split_column:
        codes = encode(frame, split_column, vocabulary(SPLITS), path, missing=("",))
        split = [SPLITS[c] if c >= 0 else None for c in codes]
    folder = root / Path(image_dir).expanduser() if image_dir else root
    finder = ImageFinder(root, dirs=[str(folder)], suffixes=(extension,), search=False)
    return build_table(
        "csv",
        path,
        image_id=frame[image_column],
        group_id=frame[group_column] if group_column else [""] * n,
        lesion=lesion,
        site=site,
        age=parse_age(frame, age_column, path, image_column),
        sex=parse_sex(frame, sex_column, path, image_column),
        source=[s or "csv" for s in frame[source_column]] if source_column else "csv",
        image_path=resolve_images(frame, image_column, path, finder),
        lesion_classes=lesion_classes,
        site_classes=site_classes,
        options={
            "file": file,
            "image_column": image_column,
            "lesion_column": lesion_column,
            "site_column": site_column,
            "group_column": group_column,
            "source_column": source_column,
            "split_column": split_column,
            "age_column": age_column,
            "sex_column": sex_column,
            "image_dir": image_dir,
            "extension": extension,
            "lesion_classes": lesion_classes,
            "site_classes": site_classes,
        },
        official_split=split,
    )
