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
