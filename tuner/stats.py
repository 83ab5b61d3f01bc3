"""Paired statistics for MTL vs single-task on the same test images: pure numpy/scipy, no I/O.

Every comparison is *paired*: both arms predict the same test images with the same seeds, so
:func:`paired_bootstrap` resamples images (one resample shared by every seed and both arms) and
:func:`paired_permutation` swaps the two arms' predictions image by image (the same swap in every seed).
The statistic of both is ``mean over seeds of metric(a) - metric(b)``. :func:`mcnemar` tests pooled
right/wrong pairs. The metric helpers (:func:`balanced_accuracy`, :func:`accuracy`, :func:`macro_auc`) are
fast numpy versions of ``trainables.metrics`` (same definitions, checked against scikit-learn in the tests)
because the resampling calls them thousands of times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as _st

MetricFn = Callable[..., "float | np.ndarray"]  # metric_fn(y, pred, weights=None), see _weights
EXACT_BELOW = 25  # McNemar: exact binomial test when b + c is below this, chi-square otherwise
BOOT_CHUNK = 200  # bootstrap replicates evaluated at once (a chunk x n weight matrix)


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """``(B, n)`` per-image weights: bootstrap counts, or one row of ones for the plain metric."""
    return np.ones((1, n)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))


def _out(values: np.ndarray, weights: np.ndarray | None):
    return float(values[0]) if weights is None else values


def _labels(pred: np.ndarray) -> np.ndarray:
    return pred.argmax(axis=1) if pred.ndim == 2 else pred


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, weights: np.ndarray | None = None):
    """Mean recall over the classes present in ``y`` (scikit-learn's ``balanced_accuracy_score``).

    ``pred``: labels or ``(n, k)`` probabilities. ``weights`` (``(B, n)`` image counts of B bootstrap
    resamples) gives B values at once; without it, one float. The other metrics follow the same contract.
    """
    y, pred = np.asarray(y), _labels(np.asarray(pred))
    w = _weights(weights, len(y))
    onehot = (y[:, None] == np.arange(int(max(y.max(), pred.max())) + 1)).astype(float)
    total, hits = w @ onehot, w @ (onehot * (pred == y)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(total > 0, hits / total, np.nan)
    return _out(np.nanmean(recall, axis=1), weights)


def accuracy(y: np.ndarray, pred: np.ndarray, weights: np.ndarray | None = None):
    y, pred = np.asarray(y), _labels(np.asarray(pred))
    w = _weights(weights, len(y))
    return _out(w @ (pred == y) / w.sum(axis=1), weights)


def macro_auc(y: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None):
    """Mean one-vs-rest ROC AUC over the classes present in ``y`` (0.5 with fewer than two), ties = 1/2."""
    y, probs = np.asarray(y), np.asarray(probs, dtype=float)
    w = _weights(weights, len(y))
    present = [c for c in np.unique(y) if 0 < np.sum(y == c) < len(y)]
    if len(present) < 2:
        return _out(np.full(len(w), 0.5), weights)
    aucs = [_weighted_auc(y == c, probs[:, c], w) for c in present]
    with np.errstate(invalid="ignore"):  # a resample may lack a class: that class is left out of its mean
        return _out(np.nanmean(aucs, axis=0), weights)


def _weighted_auc(positive: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per weight row: sort once, then sum positive weight x negative weight below it."""
    order = np.argsort(score, kind="stable")
    s, pos = score[order], positive[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups of equal scores
    ws = w[:, order]
    if len(starts) == len(s):  # no ties (the usual case for softmax outputs): no grouping needed
        neg = ws * ~pos
        w_pos = ws[:, pos]
        num, den = (w_pos * np.cumsum(neg, axis=1)[:, pos]).sum(axis=1), w_pos.sum(axis=1) * neg.sum(axis=1)
    else:
        pos_g = np.add.reduceat(ws * pos, starts, axis=1)
        neg_g = np.add.reduceat(ws * ~pos, starts, axis=1)
        below = np.cumsum(neg_g, axis=1) - neg_g
        num, den = (pos_g * (below + 0.5 * neg_g)).sum(axis=1), pos_g.sum(axis=1) * neg_g.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _seed_mean_diff(y, a_by_seed, b_by_seed, metric_fn: MetricFn, weights=None):
    diffs = [
        np.asarray(metric_fn(y, a, weights)) - metric_fn(y, b, weights)
        for a, b in zip(a_by_seed, b_by_seed, strict=True)
    ]
    return np.mean(diffs, axis=0)


def _boot_counts(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """``(reps, n)``: how often each image is drawn in each of ``reps`` resamples of n images."""
    draws = rng.integers(0, n, size=(reps, n)) + n * np.arange(reps)[:, None]
    return np.bincount(draws.ravel(), minlength=reps * n).reshape(reps, n).astype(float)


def bootstrap_ci(y, pred, metric_fn: MetricFn, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap CI of one model's metric over its test images: ``{estimate, low, high}``."""
    y, pred = np.asarray(y), np.asarray(pred)
    rng = np.random.default_rng(seed)
    chunks = [min(BOOT_CHUNK, n_boot - i) for i in range(0, n_boot, BOOT_CHUNK)]
    boots = np.concatenate([metric_fn(y, pred, _boot_counts(rng, len(y), k)) for k in chunks])
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(boots, [tail, 100 - tail])
    return {"estimate": float(metric_fn(y, pred)), "low": float(low), "high": float(high)}


def paired_bootstrap(
    y,
    pred_a_by_seed,
    pred_b_by_seed,
    metric_fn: MetricFn,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Percentile bootstrap CI of ``mean_s metric(a_s) - metric(b_s)``, resampling test images.

    ``pred_*_by_seed``: one array per seed, ``(n,)`` labels or ``(n, k)`` probabilities, rows aligned with
    ``y``. One resample (as image counts) is shared by every seed and both arms: paired by image and seed.
    ``metric_fn(y, pred, weights)`` follows the contract of :func:`balanced_accuracy`.
    """
    y = np.asarray(y)
    a, b = [np.asarray(p) for p in pred_a_by_seed], [np.asarray(p) for p in pred_b_by_seed]
    rng = np.random.default_rng(seed)
    chunks = [min(BOOT_CHUNK, n_boot - i) for i in range(0, n_boot, BOOT_CHUNK)]
    boots = np.concatenate([_seed_mean_diff(y, a, b, metric_fn, _boot_counts(rng, len(y), k)) for k in chunks])
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(boots, [tail, 100 - tail])
    return {"diff": float(_seed_mean_diff(y, a, b, metric_fn)), "low": float(low), "high": float(high)}


def paired_permutation(
    y, pred_a_by_seed, pred_b_by_seed, metric_fn: MetricFn, n_perm: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Two-sided paired permutation test: each image's two predictions are swapped at random (in every seed).

    Under "no difference" the arm labels are exchangeable image by image;
    ``p = (1 + #{|T*| >= |T|}) / (1 + n_perm)``. Vectorised through the weights contract: both arms'
    predictions are stacked (2n rows) and a permutation is a 0/1 weight row picking one of each pair.
    """
    y = np.asarray(y)
    a, b = [np.asarray(p) for p in pred_a_by_seed], [np.asarray(p) for p in pred_b_by_seed]
    observed = float(_seed_mean_diff(y, a, b, metric_fn))
    y2 = np.concatenate([y, y])
    stacked = [np.concatenate([pa, pb]) for pa, pb in zip(a, b, strict=True)]
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, n_perm, BOOT_CHUNK):
        swap = (rng.random((min(BOOT_CHUNK, n_perm - start), len(y))) < 0.5).astype(float)
        w_a, w_b = np.hstack([1 - swap, swap]), np.hstack([swap, 1 - swap])
        diffs = np.mean([np.asarray(metric_fn(y2, p, w_a)) - metric_fn(y2, p, w_b) for p in stacked], axis=0)
        extreme += int(np.sum(np.abs(diffs) >= abs(observed) - 1e-12))
    return {"diff": observed, "p_value": (1 + extreme) / (1 + n_perm)}


def mcnemar(correct_a, correct_b) -> dict[str, float | int | str]:
    """McNemar's test on paired right/wrong outcomes (pool seeds by concatenating them).

    ``b``: a right and b wrong; ``c``: a wrong and b right. With ``b + c < 25`` the exact two-sided binomial
    test (``statistic`` = min(b, c)); otherwise chi-square with continuity correction,
    ``statistic = (|b - c| - 1)^2 / (b + c)``.
    """
    ra, rb = np.asarray(correct_a, dtype=bool).ravel(), np.asarray(correct_b, dtype=bool).ravel()
    if ra.shape != rb.shape:
        raise ValueError(f"paired outcomes differ in length: {ra.shape} and {rb.shape}")
    b, c = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "statistic": 0.0, "p_value": 1.0, "method": "exact"}
    if n < EXACT_BELOW:
        p = min(1.0, 2 * float(_st.binom.cdf(min(b, c), n, 0.5)))
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p_value": p, "method": "exact"}
    chi2 = (abs(b - c) - 1) ** 2 / n
    return {
        "b": b,
        "c": c,
        "statistic": float(chi2),
        "p_value": float(_st.chi2.sf(chi2, 1)),
        "method": "chi2",
    }


def format_p(p: float) -> str:
    """``"< 0.001"``, ``"0.004"`` (below 0.01) or ``"0.31"``."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def _p_phrase(p: float) -> str:
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def verdict(
    diff: float,
    low: float,
    high: float,
    p: float,
    alpha: float = 0.05,
    metric_name: str = "balanced accuracy",
    test: str = "permutation test",
) -> str:
    """One plain-language sentence; differences are in points (metric x 100).

    "Significant" needs both the confidence interval to exclude 0 and ``p < alpha``; when only one of the two
    says so, the sentence says they disagree and that there is no clear difference.
    """
    level = round((1 - alpha) * 100)
    detail = f"{level} % CI {100 * low:+.1f} to {100 * high:+.1f}; {test} {_p_phrase(p)}"
    ci_excludes_zero, small_p = low > 0 or high < 0, p < alpha
    if ci_excludes_zero and small_p:
        side = "better" if diff > 0 else "worse"
        return f"MTL is {side} than single-task by {abs(100 * diff):.1f} points of {metric_name} ({detail})."
    if ci_excludes_zero or small_p:
        return (
            f"No clear difference in {metric_name}: MTL - single-task = {100 * diff:+.1f} points ({detail}); "
            "the confidence interval and the test disagree, so treat it as no significant difference."
        )
    return (
        f"No significant difference in {metric_name} between MTL and single-task "
        f"(MTL - single-task = {100 * diff:+.1f} points, {detail})."
    )


def class_recall_counts(y, pred, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: (number of images, number predicted correctly); recall = correct / n where n > 0."""
    y, pred = np.asarray(y), np.asarray(pred)
    return np.bincount(y, minlength=n_classes), np.bincount(y[pred == y], minlength=n_classes)


def site_accuracy_counts(y, pred, site, n_sites: int) -> tuple[np.ndarray, np.ndarray]:
    """Lesion accuracy per body site: (images, correct) per site index, missing site (-1) in the last slot."""
    y, pred, site = np.asarray(y), np.asarray(pred), np.asarray(site)
    slot = np.where(site < 0, n_sites, site)
    return np.bincount(slot, minlength=n_sites + 1), np.bincount(slot[pred == y], minlength=n_sites + 1)
