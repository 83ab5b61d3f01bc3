"""Paired statistics for two arms (e.g. MTL vs single-task) on the same test images: pure numpy/scipy, no I/O.

The design has two levels: training runs (seeds) and lesion groups (the images of one lesion or patient, kept
together by the split). Every comparison is *paired*: both arms predict the same test images with the same seeds.
:func:`paired_bootstrap` resamples seeds and lesion groups (the same draw for both arms), so its interval is for
the expected difference of a new training run on new lesions; :func:`paired_permutation` swaps the two arms
within (seed, lesion group) cells. The statistic of both is ``mean over seeds of metric(a) - metric(b)``.
:func:`holm` adjusts the p-values of secondary metrics; :func:`mcnemar` tests pooled right/wrong pairs (it treats
images as independent: exploratory only). The metric helpers (:func:`balanced_accuracy`, :func:`accuracy`,
:func:`macro_auc`) are fast numpy versions of ``trainables.metrics`` (same definitions, checked against
scikit-learn in the tests) because the resampling calls them thousands of times.
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


def groups_index(groups, n: int) -> tuple[np.ndarray, int]:
    """Each image's resampling unit as ``0..G-1`` and ``G``: its lesion (or patient) group, or the image itself
    when ``groups`` is None. Groups are numbered in sorted order of their ids, so copies of the same images under
    the same ids resample identically."""
    if groups is None:
        return np.arange(n), n
    ids, index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    if len(index) != n:
        raise ValueError(f"{len(index)} group ids for {n} images")
    return index, len(ids)


def _boot_counts(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """``(reps, n)``: how often each of n units is drawn in each of ``reps`` resamples of n units."""
    draws = rng.integers(0, n, size=(reps, n)) + n * np.arange(reps)[:, None]
    return np.bincount(draws.ravel(), minlength=reps * n).reshape(reps, n).astype(float)


def _chunks(total: int) -> list[int]:
    return [min(BOOT_CHUNK, total - i) for i in range(0, total, BOOT_CHUNK)]


def _seed_values(y, a_by_seed, b_by_seed, metric_fn: MetricFn, weights=None) -> np.ndarray:
    """``(S, B)`` (or ``(S,)`` without weights): metric(a_s) - metric(b_s) per seed, or metric(a_s) alone."""
    if b_by_seed is None:
        return np.array([np.asarray(metric_fn(y, a, weights)) for a in a_by_seed])
    return np.array(
        [
            np.asarray(metric_fn(y, a, weights)) - metric_fn(y, b, weights)
            for a, b in zip(a_by_seed, b_by_seed, strict=True)
        ]
    )


def _percentiles(boots: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(boots, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(
    y,
    pred_a_by_seed,
    pred_b_by_seed,
    metric_fn: MetricFn,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    groups=None,
    resample_seeds: bool = True,
) -> dict[str, float]:
    """Two-level percentile bootstrap CI of ``mean_s metric(a_s) - metric(b_s)`` (of ``mean_s metric(a_s)`` when
    ``pred_b_by_seed`` is None).

    The units are the training run (seed) and the lesion group: each replicate draws the seeds with replacement
    and the lesion groups with replacement (every image of a drawn group comes along), and both arms get the same
    draw. So the interval is for the expected difference of a *new* training run on *new* lesions from this
    population; with ``resample_seeds=False`` and ``groups=None`` it is the older, narrower interval for these
    seeds on images treated as independent. ``pred_*_by_seed``: one array per seed, ``(n,)`` labels or ``(n, k)``
    probabilities, rows aligned with ``y``; ``groups``: ``(n,)`` lesion (or patient) ids, None = one per image.
    ``metric_fn(y, pred, weights)`` follows the contract of :func:`balanced_accuracy`.
    """
    y = np.asarray(y)
    a = [np.asarray(p) for p in pred_a_by_seed]
    b = None if pred_b_by_seed is None else [np.asarray(p) for p in pred_b_by_seed]
    index, n_groups = groups_index(groups, len(y))
    n_seeds = len(a)
    rng = np.random.default_rng(seed)
    boots = []
    for k in _chunks(n_boot):
        weights = _boot_counts(rng, n_groups, k)[:, index]  # (k, n): how often each image's group was drawn
        per_seed = _seed_values(y, a, b, metric_fn, weights)  # (S, k)
        if resample_seeds and n_seeds > 1:
            seed_counts = _boot_counts(rng, n_seeds, k)  # (k, S)
            boots.append(np.einsum("ks,sk->k", seed_counts, per_seed) / n_seeds)
        else:
            boots.append(per_seed.mean(axis=0))
    low, high = _percentiles(np.concatenate(boots), level)
    key = "estimate" if b is None else "diff"
    return {key: float(_seed_values(y, a, b, metric_fn).mean()), "low": low, "high": high}


def bootstrap_ci(
    y, pred, metric_fn: MetricFn, n_boot: int = 2000, seed: int = 0, level: float = 0.95, groups=None
) -> dict:
    """Percentile bootstrap CI of one model's metric, resampling lesion groups (images when ``groups`` is None):
    ``{estimate, low, high}``."""
    return paired_bootstrap(y, [pred], None, metric_fn, n_boot, seed, level, groups=groups, resample_seeds=False)


def paired_permutation(
    y, pred_a_by_seed, pred_b_by_seed, metric_fn: MetricFn, n_perm: int = 2000, seed: int = 0, groups=None
) -> dict[str, float]:
    """Two-sided paired permutation test of ``mean_s metric(a_s) - metric(b_s)``: within every (seed, lesion group)
    cell the two arms' predictions are swapped together at random.

    Under "no difference" the arm labels are exchangeable cell by cell; ``p = (1 + #{|T*| >= |T|}) / (1 +
    n_perm)``. It conditions on the seeds run, so it does not see seed-to-seed variation: the verdict also needs
    the two-level bootstrap interval (:func:`paired_bootstrap`) to exclude zero. Vectorised through the weights
    contract: both arms' predictions are stacked (2n rows) and a permutation is a 0/1 weight row picking one of
    each pair.
    """
    y = np.asarray(y)
    a, b = [np.asarray(p) for p in pred_a_by_seed], [np.asarray(p) for p in pred_b_by_seed]
    index, n_groups = groups_index(groups, len(y))
    observed = float(_seed_values(y, a, b, metric_fn).mean())
    y2 = np.concatenate([y, y])
    stacked = [np.concatenate([pa, pb]) for pa, pb in zip(a, b, strict=True)]
    rng = np.random.default_rng(seed)
    extreme = 0
    for k in _chunks(n_perm):
        flips = rng.random((len(stacked), k, n_groups)) < 0.5  # one coin per (seed, group) cell
        diffs = []
        for cell_flips, p in zip(flips, stacked, strict=True):
            swap = cell_flips[:, index].astype(float)  # (k, n)
            w_a, w_b = np.hstack([1 - swap, swap]), np.hstack([swap, 1 - swap])
            diffs.append(np.asarray(metric_fn(y2, p, w_a)) - metric_fn(y2, p, w_b))
        extreme += int(np.sum(np.abs(np.mean(diffs, axis=0)) >= abs(observed) - 1e-12))
    return {"diff": observed, "p_value": (1 + extreme) / (1 + n_perm)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return [float(v) for v in out]


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
