"""Leakage-free train/val/test splits: stratified by lesion class, grouped by lesion or patient.

No ``group_id`` appears in two splits (all images of one lesion, or one patient, stay together), class
proportions stay close across splits, and the result is deterministic for a seed. Built on scikit-learn's
``StratifiedGroupKFold``: the test split is one fold of ``round(1 / test_fraction)``, then the validation split
one fold of the remainder.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from trainables.errors import UserError


def _one_fold(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of one stratified, grouped fold holding about ``fraction`` of the rows."""
    n_splits = max(2, round(1.0 / fraction))
    if len(np.unique(groups)) < n_splits:
        raise UserError(
            f"only {len(np.unique(groups))} lesion/patient groups: too few for a {fraction:.0%} split; "
            "add images or lower val_fraction/test_fraction"
        )
    _, counts = np.unique(y, return_counts=True)
    if counts.max() < n_splits:  # scikit-learn refuses: no class can fill one image per fold
        raise UserError(
            f"only {int(counts.max())} images in the largest class: too few for a {fraction:.0%} stratified split "
            f"(it needs at least {n_splits}); add images or raise val_fraction/test_fraction (or set them to 0)"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class has only k members": expected for rare classes; they still get split.
        warnings.simplefilter("ignore", UserWarning)
        _, held_out = next(splitter.split(np.zeros(len(y)), y, groups))
    mask = np.zeros(len(y), dtype=bool)
    mask[held_out] = True
    return mask


def assign_splits(
    lesion: np.ndarray, groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Return an array of ``"train"``/``"val"``/``"test"`` per row."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1"
        )
    lesion, groups = np.asarray(lesion), np.asarray(groups).astype(str)
    split = np.full(len(lesion), "train", dtype=object)
    rest = np.arange(len(lesion))
    if test_fraction > 0:
        test = _one_fold(lesion, groups, test_fraction, seed)
        split[test] = "test"
        rest = rest[~test]
    if val_fraction > 0:
        val = _one_fold(lesion[rest], groups[rest], val_fraction / (1.0 - test_fraction), seed + 1)
        split[rest[val]] = "val"
    return split


def check_no_leakage(groups: np.ndarray, split: np.ndarray) -> None:
    """Raise if any group has images in two splits (used on official splits, which we do not build)."""
    per_group: dict[str, str] = {}
    for g, s in zip(np.asarray(groups).astype(str).tolist(), np.asarray(split).tolist(), strict=True):
        if per_group.setdefault(g, s) != s:
            raise UserError(
                f"group {g!r} has images in both {per_group[g]!r} and {s!r}: the official split leaks; "
                "drop --official-split to let skintune make a grouped split"
            )
