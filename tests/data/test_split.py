"""Leakage-free splits: grouped, stratified, deterministic."""

import numpy as np
import pytest

from trainables.data.split import assign_splits, check_no_leakage
from trainables.errors import UserError


def _data(n_groups=600, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_groups)  # 1-4 images per lesion, as in ISIC
    groups = np.repeat([f"L{i}" for i in range(n_groups)], sizes)
    group_class = rng.choice(4, n_groups, p=[0.55, 0.25, 0.15, 0.05])
    lesion = np.repeat(group_class, sizes)
    return lesion, groups


def test_no_group_in_two_splits_and_fractions_close():
    lesion, groups = _data()
    split = assign_splits(lesion, groups, 0.15, 0.15, seed=0)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    frac = {s: np.mean(split == s) for s in ("train", "val", "test")}
    assert frac["train"] == pytest.approx(0.70, abs=0.04)
    assert frac["val"] == pytest.approx(0.15, abs=0.04)
    assert frac["test"] == pytest.approx(0.15, abs=0.04)
    overall = np.bincount(lesion, minlength=4) / len(lesion)
    for s in ("train", "val", "test"):
        part = np.bincount(lesion[split == s], minlength=4) / np.sum(split == s)
        assert np.abs(part - overall).max() < 0.04, (s, part, overall)


def test_deterministic_for_a_seed_and_differs_across_seeds():
    lesion, groups = _data()
    a = assign_splits(lesion, groups, 0.15, 0.15, seed=3)
    b = assign_splits(lesion, groups, 0.15, 0.15, seed=3)
    c = assign_splits(lesion, groups, 0.15, 0.15, seed=4)
    assert (a == b).all()
    assert (a != c).any()


def test_zero_fractions_and_bad_fractions():
    lesion, groups = _data(50)
    assert set(assign_splits(lesion, groups, 0.0, 0.0, 0)) == {"train"}
    with pytest.raises(UserError, match="sum below 1"):
        assign_splits(lesion, groups, 0.6, 0.5, 0)
    with pytest.raises(UserError, match="too few"):
        assign_splits(lesion[:3], groups[:3], 0.15, 0.15, 0)


def test_tiny_classes_are_refused_in_one_line_not_by_scikit_learn():
    # 10 lesions, 5 per class: enough groups for 7 folds, but no class can give one image to each fold
    lesion, groups = np.repeat([0, 1], 5), np.array([f"L{i}" for i in range(10)])
    with pytest.raises(UserError, match="only 5 images in the largest class.*at least 7"):
        assign_splits(lesion, groups, 0.15, 0.15, 0)
    assert set(assign_splits(lesion, groups, 0.0, 0.0, 0)) == {"train"}


def test_official_split_leak_is_refused():
    groups = np.array(["a", "a", "b"])
    with pytest.raises(UserError, match="group 'a'"):
        check_no_leakage(groups, np.array(["train", "test", "val"]))
    check_no_leakage(groups, np.array(["train", "train", "val"]))
