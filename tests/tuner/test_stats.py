"""Paired statistics on hand-made predictions whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from tuner import stats


def _arm(y: np.ndarray, right: float, rng: np.random.Generator, k: int = 3) -> np.ndarray:
    """Predictions that are right for a fraction ``right`` of the images, a wrong class otherwise."""
    wrong = (y + rng.integers(1, k, len(y))) % k
    return np.where(rng.random(len(y)) < right, y, wrong)


@pytest.fixture
def y() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 3, 200)


def test_identical_predictions_give_no_difference(y):
    pred = [_arm(y, 0.7, np.random.default_rng(s)) for s in (1, 2)]
    boot = stats.paired_bootstrap(y, pred, pred, stats.balanced_accuracy, n_boot=300)
    assert boot["diff"] == 0.0 and boot["low"] <= 0.0 <= boot["high"]
    assert stats.mcnemar(pred[0] == y, pred[0] == y)["p_value"] == 1.0
    assert stats.paired_permutation(y, pred, pred, stats.accuracy, n_perm=100)["p_value"] == 1.0


def test_clearly_better_arm(y):
    rng = np.random.default_rng(3)
    better, worse = [_arm(y, 0.9, rng) for _ in range(2)], [_arm(y, 0.5, rng) for _ in range(2)]
    boot = stats.paired_bootstrap(y, better, worse, stats.balanced_accuracy, n_boot=500)
    assert 0.0 < boot["low"] < boot["diff"] < boot["high"]
    expected = np.mean(
        [balanced_accuracy_score(y, a) - balanced_accuracy_score(y, b) for a, b in zip(better, worse, strict=True)]
    )
    assert boot["diff"] == pytest.approx(expected)
    correct_a = np.concatenate([p == y for p in better])
    correct_b = np.concatenate([p == y for p in worse])
    assert stats.mcnemar(correct_a, correct_b)["p_value"] < 1e-6
    perm = stats.paired_permutation(y, better, worse, stats.balanced_accuracy, n_perm=200)
    assert perm["p_value"] == pytest.approx(1 / 201)  # no permutation reaches the observed difference
    text = stats.verdict(boot["diff"], boot["low"], boot["high"], perm["p_value"], metric_name="balanced accuracy")
    assert text.startswith(f"MTL is better than single-task by {100 * boot['diff']:.1f} points")


def test_mcnemar_exact_small_case_by_hand():
    # b = 1 (only a right), c = 6 (only b right), 3 both right: p = 2 * P(X <= 1 | n=7, 1/2) = 2 * 8 / 128
    a = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1], bool)
    out = stats.mcnemar(a, b)
    assert (out["b"], out["c"], out["method"]) == (1, 6, "exact")
    assert out["p_value"] == pytest.approx(16 / 128)


def test_mcnemar_chi_square_case_by_hand():
    a = np.array([True] * 30 + [False] * 10 + [True] * 5)
    b = np.array([False] * 30 + [True] * 10 + [True] * 5)
    out = stats.mcnemar(a, b)
    chi2 = (abs(30 - 10) - 1) ** 2 / 40
    assert out["method"] == "chi2" and out["statistic"] == pytest.approx(chi2)
    assert out["p_value"] == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))  # chi-square, 1 dof


def test_bootstrap_is_deterministic_for_a_seed(y):
    rng = np.random.default_rng(5)
    a, b = [_arm(y, 0.7, rng)], [_arm(y, 0.6, rng)]
    first = stats.paired_bootstrap(y, a, b, stats.accuracy, n_boot=300, seed=7)
    assert first == stats.paired_bootstrap(y, a, b, stats.accuracy, n_boot=300, seed=7)
    assert first != stats.paired_bootstrap(y, a, b, stats.accuracy, n_boot=300, seed=8)


def test_fast_metrics_match_sklearn_also_on_a_resample(y):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), len(y))
    probs[:20] = 1 / 3  # ties
    pred = probs.argmax(axis=1)
    auc = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(3)])
    assert stats.macro_auc(y, probs) == pytest.approx(auc)
    assert stats.balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))
    assert stats.accuracy(y, probs) == pytest.approx(accuracy_score(y, pred))
    idx = rng.integers(0, len(y), len(y))
    counts = np.bincount(idx, minlength=len(y))[None, :]
    auc_idx = np.mean([roc_auc_score(y[idx] == c, probs[idx, c]) for c in range(3)])
    assert stats.macro_auc(y, probs, counts)[0] == pytest.approx(auc_idx)
    assert stats.balanced_accuracy(y, pred, counts)[0] == pytest.approx(balanced_accuracy_score(y[idx], pred[idx]))


def test_verdict_says_no_significant_difference():
    text = stats.verdict(0.004, -0.012, 0.020, 0.62, metric_name="balanced accuracy")
    assert "No significant difference in balanced accuracy" in text and "+0.4 points" in text
    disagree = stats.verdict(0.02, -0.001, 0.04, 0.03)
    assert "disagree" in disagree and "no significant difference" in disagree
    assert stats.verdict(-0.031, -0.054, -0.008, 0.01).startswith("MTL is worse than single-task by 3.1 points")


def test_counts_and_mean_sd():
    y = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0, 0])
    n, correct = stats.class_recall_counts(y, pred, 4)
    assert n.tolist() == [2, 3, 1, 0] and correct.tolist() == [1, 2, 0, 0]
    site = np.array([0, 1, -1, 1, 0, -1])
    n, correct = stats.site_accuracy_counts(y, pred, site, 2)
    assert n.tolist() == [2, 2, 2] and correct.tolist() == [1, 1, 1]  # last slot: missing site
    assert stats.mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert stats.mean_sd([0.5]) == (0.5, 0.0)


# -- the two-level design: training runs (seeds) x lesion groups ---------------------------------------------------


def _lesions(n_lesions: int = 300, per_lesion: int = 2, k: int = 4, seed: int = 0):
    """Test labels and lesion ids: ``per_lesion`` images of each lesion share its label."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, k, n_lesions)
    groups = np.repeat(np.arange(n_lesions), per_lesion)
    return label[groups], groups


def _runs(y, groups, right: float, rng, shift=None, k: int = 4) -> np.ndarray:
    """One run's labels: lesion-level right/wrong (both images of a lesion together) at rate ``right``; where
    ``shift`` (a per-lesion bool) holds, a wrong lesion is made right: the arm's effect."""
    n_lesions = groups.max() + 1
    ok = rng.random(n_lesions) < right
    if shift is not None:
        ok |= shift
    wrong = (y + rng.integers(1, k, len(y))) % k
    return np.where(ok[groups], y, wrong)


def test_consistent_effect_over_every_seed_and_lesion_is_detected():
    y, groups = _lesions()
    rng = np.random.default_rng(1)
    base = [_runs(y, groups, 0.6, rng) for _ in range(5)]
    # the same +~5-point effect in every run, spread over all lesions: 12.5 % of the wrong lesions become right
    better = [np.where(rng.random(groups.max() + 1)[groups] < 0.125, y, b) for b in base]
    boot = stats.paired_bootstrap(y, better, base, stats.accuracy, n_boot=1000, groups=groups)
    perm = stats.paired_permutation(y, better, base, stats.accuracy, n_perm=500, groups=groups)
    assert 0.03 < boot["diff"] < 0.07
    assert 0.0 < boot["low"] < boot["diff"] < boot["high"] and perm["p_value"] < 0.01
    text = stats.verdict(boot["diff"], boot["low"], boot["high"], perm["p_value"], metric_name="accuracy")
    assert text.startswith(f"MTL is better than single-task by {100 * boot['diff']:.1f} points of accuracy")


def test_an_effect_in_one_seed_only_is_not_significant():
    y, groups = _lesions()
    rng = np.random.default_rng(2)
    base = [_runs(y, groups, 0.6, rng) for _ in range(5)]
    # runs 1-4: the arms differ only by noise (each re-draws 5 % of its lesions); run 0: +15 points in arm a
    other = [np.where(rng.random(groups.max() + 1)[groups] < 0.05, _runs(y, groups, 0.6, rng), b) for b in base]
    other[0] = np.where(rng.random(groups.max() + 1)[groups] < 0.4, y, base[0])
    boot = stats.paired_bootstrap(y, other, base, stats.accuracy, n_boot=2000, groups=groups)
    perm = stats.paired_permutation(y, other, base, stats.accuracy, n_perm=500, groups=groups)
    fixed = stats.paired_bootstrap(y, other, base, stats.accuracy, n_boot=2000, resample_seeds=False)
    assert boot["diff"] > 0.02
    assert fixed["low"] > 0.0  # a fixed-seed image-level bootstrap calls it significant ...
    assert boot["low"] <= 0.0 < boot["high"]  # ... the two-level interval does not exclude zero
    text = stats.verdict(boot["diff"], boot["low"], boot["high"], perm["p_value"], metric_name="accuracy")
    assert not text.startswith("MTL is better") and f"{100 * boot['diff']:+.1f} points" in text


def test_copies_of_images_under_the_same_lesion_leave_the_statistics_unchanged():
    y, groups = _lesions(n_lesions=150, per_lesion=1)
    rng = np.random.default_rng(3)
    a = [_runs(y, groups, 0.65, rng) for _ in range(3)]
    b = [_runs(y, groups, 0.55, rng) for _ in range(3)]
    copy = lambda x: np.repeat(x, 3, axis=0)  # noqa: E731 - every image three times, lesion id kept
    for fn in (stats.balanced_accuracy, stats.accuracy):
        once = stats.paired_bootstrap(y, a, b, fn, n_boot=500, groups=groups)
        thrice = stats.paired_bootstrap(copy(y), map(copy, a), map(copy, b), fn, n_boot=500, groups=copy(groups))
        assert thrice == pytest.approx(once, abs=1e-12)
        p_once = stats.paired_permutation(y, a, b, fn, n_perm=200, groups=groups)
        p_thrice = stats.paired_permutation(copy(y), map(copy, a), map(copy, b), fn, n_perm=200, groups=copy(groups))
        assert p_thrice == pytest.approx(p_once, abs=1e-12)
    # treating the copies as independent images narrows the interval: what grouping protects against
    naive = stats.paired_bootstrap(copy(y), map(copy, a), map(copy, b), stats.accuracy, n_boot=500)
    grouped = stats.paired_bootstrap(y, a, b, stats.accuracy, n_boot=500, groups=groups)
    assert naive["high"] - naive["low"] < 0.8 * (grouped["high"] - grouped["low"])


def test_the_two_level_interval_covers_the_new_run_new_lesion_difference():
    """Coverage on simulated studies whose truth is known: each training run shifts arm a's per-lesion chance of
    being right by its own draw from N(0.04, 0.03) (seed variance), lesions differ in difficulty, two images per
    lesion. The estimand, the expected accuracy difference of a new run on new lesions, is 0.04. The two-level
    95 % interval covers it in most studies; the fixed-seed image-level interval misses it far more often."""
    rng = np.random.default_rng(11)
    covered, covered_fixed, studies = 0, 0, 60
    for _ in range(studies):
        y, groups = _lesions(n_lesions=200, seed=int(rng.integers(1 << 30)))
        difficulty = rng.uniform(0.35, 0.75, 200)
        a, b = [], []
        for _ in range(5):
            effect = rng.normal(0.04, 0.03)
            u = rng.random(200)  # the same lesion draw for both arms: a paired design
            b.append(np.where((u < difficulty)[groups], y, (y + 1) % 4))
            a.append(np.where((u < difficulty + effect)[groups], y, (y + 1) % 4))
        two = stats.paired_bootstrap(y, a, b, stats.accuracy, n_boot=400, groups=groups, seed=int(rng.integers(99)))
        one = stats.paired_bootstrap(y, a, b, stats.accuracy, n_boot=400, resample_seeds=False)
        covered += two["low"] <= 0.04 <= two["high"]
        covered_fixed += one["low"] <= 0.04 <= one["high"]
    assert covered / studies >= 0.85
    assert covered_fixed / studies < covered / studies - 0.15


def test_holm_adjusts_in_step_down_order():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2 x 0.5, capped; never below an earlier step
    assert stats.holm([0.2, 0.001]) == pytest.approx([0.2, 0.002])
    assert stats.holm([]) == []
