"""Dataset adapters: read a public release (or a generic CSV) into a :class:`RawTable`.

``read_dataset("ham10000", "/data/ham10000", {"harmonize_sites": True})`` picks the adapter, checks the root
and the option names, reads, and validates the table. Each format's module docstring gives its expected
layout, vocabularies (fixed and documented, so indexes are stable across runs) and options.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path

from trainables.data.adapters.csv_format import read_csv
from trainables.data.adapters.derm7pt import read_derm7pt
from trainables.data.adapters.ham10000 import read_ham10000
from trainables.data.adapters.isic2019 import read_isic2019
from trainables.data.adapters.isic2020 import read_isic2020
from trainables.data.adapters.pad_ufes20 import read_pad_ufes20
from trainables.data.schema import RawTable
from trainables.errors import UserError

FORMATS: dict[str, Callable[..., RawTable]] = {
    "isic2019": read_isic2019,
    "isic2020": read_isic2020,
    "ham10000": read_ham10000,
    "derm7pt": read_derm7pt,
    "pad_ufes20": read_pad_ufes20,
    "csv": read_csv,
}

__all__ = ["FORMATS", "check_format", "option_names", "read_dataset"]


def option_names(fmt: str) -> list[str]:
    """The keyword options the adapter of ``fmt`` accepts."""
    params = inspect.signature(FORMATS[fmt]).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def check_format(fmt: str, options: dict | None = None) -> None:
    """Refuse an unknown format or option name (what ``read_dataset`` checks before it reads anything)."""
    if fmt not in FORMATS:
        close = difflib.get_close_matches(str(fmt), list(FORMATS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(
            f"unknown dataset format {fmt!r}; known formats: {', '.join(FORMATS)}; "
            f"{hint}set --format (or data.format in the experiment YAML) to one of them"
        )
    options = dict(options or {})
    valid = option_names(fmt)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(
            f"format {fmt!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )


def read_dataset(fmt: str, root: str | Path, options: dict | None = None) -> RawTable:
    """Read the dataset at ``root`` in format ``fmt`` with the adapter's keyword ``options``; validate it."""
    check_format(fmt, options)
    options = dict(options or {})
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "not found"
        raise UserError(f"{root}: dataset root {what}; set the data root to the folder holding the {fmt} release")
    table = FORMATS[fmt](root, **options)
    table.validate(table.frame.attrs.get("source_file", root))
    return table
