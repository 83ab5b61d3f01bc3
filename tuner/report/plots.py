"""The report's figures: one function per figure, each saves a PNG and returns its path (matplotlib, Agg)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from trainables import storage  # noqa: E402
from tuner.arms import ARMS  # noqa: E402

ARM_COLORS = {"mtl": "#2f6ea5", "meta": "#3a9b5c", "mtl_meta": "#8e5ab5", "single_task": "#d9822b"}
ARM_LABELS = {arm: a.title for arm, a in ARMS.items()}
STATUS_COLORS = {
    "completed": "#2f6ea5",
    "stopped_early": "#9aa5b1",
    "diverged": "#c23b22",
    "error": "#000000",
}
DPI = 110


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix.lstrip("."), dpi=DPI, bbox_inches="tight")  # "tight": legends outside
    plt.close(fig)
    storage.write_bytes(str(path), image.getvalue())  # whole or not at all: a killed compare leaves no half plot
    return path


def _style(ax, grid: str = "y") -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis=grid, alpha=0.3)
    ax.set_axisbelow(True)


def _legend_right(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _legend_below(ax, ncol: int, below: float = 0.14) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -below), ncol=ncol, fontsize=8, frameon=False)


def _slanted(ax, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", rotation_mode="anchor", fontsize=8)


def headline(
    per_seed: dict[str, dict[str, list[float]]], diffs: dict[str, dict[str, dict]], path: Path, order: list[str]
) -> Path:
    """Left: mean per metric and arm with seed dots; right: each arm's paired difference with single-task (points)
    with its 95 % CI.

    ``per_seed[metric][arm]`` = values over seeds; ``diffs[metric][arm]`` = {diff, low, high}; ``order``: the arms.
    """
    metrics = list(per_seed)
    compared = [a for a in order if any(a in diffs[m] for m in metrics)]
    fig, (ax, ax_d) = plt.subplots(
        1, 2, figsize=(10, 3.6 + 0.25 * max(0, len(compared) - 1) * len(metrics)), gridspec_kw={"width_ratios": [3, 2]}
    )
    x, width = np.arange(len(metrics)), 0.72 / len(order)
    for i, arm in enumerate(order):
        vals = [per_seed[m][arm] for m in metrics]
        pos = x + (i - (len(order) - 1) / 2) * width
        ax.bar(pos, [np.mean(v) for v in vals], width, color=ARM_COLORS[arm], alpha=0.85, label=ARM_LABELS[arm])
        for p, v in zip(pos, vals, strict=True):
            ax.scatter(np.full(len(v), p), v, color="black", s=12, zorder=3)
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1)
    ax.set_title("test split, mean over seeds (dots: seeds)")
    _legend_below(ax, min(len(order), 4), below=0.22)  # under two-line tick labels (metric and its role)
    _style(ax)
    rows = [(m, a) for m in metrics for a in compared if a in diffs[m]]
    d = np.array([[diffs[m][a]["diff"], diffs[m][a]["low"], diffs[m][a]["high"]] for m, a in rows]) * 100
    y = np.arange(len(rows))[::-1]
    for arm in compared:
        mine = np.array([a == arm for _, a in rows])
        color = "#333" if len(compared) == 1 else ARM_COLORS.get(arm, "#333")
        # a percentile interval need not contain the estimate (or equals it up to rounding): draw no negative whisker
        lo, hi = np.clip(d[mine, 0] - d[mine, 1], 0, None), np.clip(d[mine, 2] - d[mine, 0], 0, None)
        ax_d.errorbar(d[mine, 0], y[mine], xerr=[lo, hi], fmt="o", color=color, capsize=4)
    ax_d.axvline(0, color="#c23b22", lw=1, ls="--")
    ticks = [m if len(compared) == 1 else f"{m.split(chr(10))[0]}: {ARMS[a].label}" for m, a in rows]
    ax_d.set_yticks(y, ticks, fontsize=8 if len(compared) > 1 else None)
    name = ARM_LABELS.get(compared[0], compared[0]).split(" (")[0] if len(compared) == 1 else "arm"
    ax_d.set_xlabel(f"{name} - single-task (points), 95 % CI")
    ax_d.set_title("paired difference")
    ax_d.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def grouped_rates(
    labels: list[str], n: np.ndarray, rates: dict[str, np.ndarray], title: str, xlabel: str, path: Path
) -> Path:
    """Horizontal bars per group (class or site) and arm: mean rate over seeds, seed range as a whisker,
    the group's image count next to its name. ``rates[arm]`` is (seeds, groups)."""
    fig, ax = plt.subplots(figsize=(8, (0.3 + 0.13 * len(rates)) * len(labels) + 1.4))
    y, height = np.arange(len(labels))[::-1], 0.76 / len(rates)
    for i, arm in enumerate(rates):
        r = np.asarray(rates[arm], dtype=float)
        with warnings.catch_warnings():  # a group without test images has no rate: NaN, drawn as 0 beside n=0
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(r, axis=0)
            # clipped: the mean of equal rates can round a hair past them, and matplotlib refuses a negative error
            err = np.clip([mean - np.nanmin(r, axis=0), np.nanmax(r, axis=0) - mean], 0, None)
        ax.barh(
            y + ((len(rates) - 1) / 2 - i) * height,
            np.nan_to_num(mean),
            height,
            xerr=np.nan_to_num(err),
            color=ARM_COLORS.get(arm, "#555"),
            alpha=0.85,
            label=ARM_LABELS.get(arm, arm),
            error_kw={"lw": 0.8},
        )
    ax.set_yticks(y, [f"{lab}  (n={k})" for lab, k in zip(labels, n, strict=True)])
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    _legend_right(ax)
    _style(ax, "x")
    return _save(fig, path)


def confusion(cms: dict[str, np.ndarray], classes: list[str], n_seeds: int, path: Path) -> Path:
    """Side-by-side confusion matrices pooled over seeds: colour = row share, text = count."""
    k = len(classes)
    fig, axes = plt.subplots(1, len(cms), figsize=(4.2 * len(cms) + 0.6, 0.45 * k + 2.6))
    for ax, (arm, cm) in zip(np.atleast_1d(axes), cms.items(), strict=True):
        rows = cm.sum(axis=1, keepdims=True)
        share = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        _slanted(ax, classes)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{ARM_LABELS.get(arm, arm)} ({n_seeds} seeds pooled)", fontsize=10)
    return _save(fig, path)


def objective(trials: pd.DataFrame, metric: str, mode: str, path: Path) -> Path:
    """Each trial's best objective in creation order, coloured by outcome, and the best so far."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(trials))
    values = trials["best_objective"].to_numpy(dtype=float)
    finite = np.isfinite(values)
    floor = np.nanmin(values) - 0.05 * (np.nanmax(values) - np.nanmin(values) or 1) if finite.any() else 0.0
    for status, color in STATUS_COLORS.items():
        rows = (trials["status"] == status).to_numpy()
        if rows.any():
            ax.scatter(
                x[rows & finite],
                values[rows & finite],
                color=color,
                s=26,
                label=f"{status} ({rows.sum()})",
                zorder=3,
            )
            ax.scatter(
                x[rows & ~finite],
                np.full((rows & ~finite).sum(), floor),
                color=color,
                marker="x",
                s=30,
                zorder=3,
            )
    filled = np.where(np.isfinite(values), values, -np.inf if mode == "max" else np.inf)
    best = np.maximum.accumulate(filled) if mode == "max" else np.minimum.accumulate(filled)
    ax.step(x, np.where(np.isfinite(best), best, np.nan), where="post", color="#555", lw=1.2, label="best so far")
    ax.set_xlabel("trial (creation order)")
    ax.set_ylabel(f"best {metric}")
    ax.set_title("objective over trials (x: no value)")
    _legend_right(ax)
    _style(ax)
    return _save(fig, path)


def best_so_far(curves: dict[str, pd.DataFrame], labels: dict[str, str], metric: str, mode: str, path: Path) -> Path:
    """The best objective so far over each search's trials (creation order), one line per search (``curves``:
    arm -> its trials; ``labels``: arm -> legend text), so that searches with the same budget can be compared."""
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for arm, trials in curves.items():
        values = trials["best_objective"].to_numpy(dtype=float)
        filled = np.where(np.isfinite(values), values, -np.inf if mode == "max" else np.inf)
        best = np.maximum.accumulate(filled) if mode == "max" else np.minimum.accumulate(filled)
        x = np.arange(1, len(trials) + 1)
        color = ARM_COLORS.get(arm, "#555")
        ax.step(x, np.where(np.isfinite(best), best, np.nan), where="post", color=color, lw=1.6, label=labels[arm])
        ax.scatter(x[np.isfinite(values)], values[np.isfinite(values)], color=color, s=14, alpha=0.5, zorder=3)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trials run (creation order)")
    ax.set_ylabel(f"best {metric} so far")
    ax.set_title("best objective so far: each search (dots: each trial's best)")
    _legend_right(ax)
    _style(ax)
    return _save(fig, path)


def importances(found: dict[str, float], path: Path) -> Path:
    names = list(found)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.3))
    ax.barh(names, [found[n] for n in names], color="#2f6ea5")
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title("parameter importances")
    _style(ax, "x")
    return _save(fig, path)


def data_counts(counts: dict[str, dict], lesion_classes: list[str], site_classes: list[str], path: Path) -> Path:
    """Stacked bars: images per lesion class (left) and per site (right, missing included) in each split."""
    splits = [s for s in ("train", "val", "test") if s in counts]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    parts = [("lesion class", lesion_classes, "lesion"), ("body site", [*site_classes, "missing"], "site")]
    for ax, (title, names, key) in zip(axes, parts, strict=True):
        bottom = np.zeros(len(names))
        for split, color in zip(splits, ("#2f6ea5", "#7fb0d9", "#d9822b"), strict=False):
            c = counts[split]
            if key == "lesion":
                vals = np.array([c["lesion"].get(n, 0) for n in lesion_classes], dtype=float)
            else:
                vals = np.array([*(c["site"].get(n, 0) for n in site_classes), c.get("site_missing", 0)], dtype=float)
            ax.bar(names, vals, bottom=bottom, color=color, label=split)
            bottom += vals
        ax.set_title(f"images per {title} and split")
        _slanted(ax, names)
        _style(ax)
    _legend_right(axes[1])
    return _save(fig, path)


def reliability(pooled: dict[str, tuple[np.ndarray, np.ndarray]], bins: int, path: Path) -> Path:
    """Reliability diagram of the top class, one curve per arm (``pooled[arm]`` = (probs, labels) of all its
    seeds): accuracy against mean confidence in ``bins`` equal-width confidence bins (empty bins left out), the
    diagonal = perfect calibration; below it = over-confident."""
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    ax.plot([0, 1], [0, 1], color="#9aa5b1", lw=1, ls="--", label="perfectly calibrated")
    for arm, (probs, labels) in pooled.items():
        confidence, hit = probs.max(axis=1), probs.argmax(axis=1) == labels
        which = np.minimum((confidence * bins).astype(np.int64), bins - 1)  # the bins of calibration.ece
        used = [k for k in range(bins) if (which == k).any()]
        conf = [confidence[which == k].mean() for k in used]
        acc = [hit[which == k].mean() for k in used]
        ax.plot(conf, acc, marker="o", ms=4, color=ARM_COLORS.get(arm, "#555"), label=ARM_LABELS.get(arm, arm))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean top-class confidence (bin)")
    ax.set_ylabel("accuracy (bin)")
    ax.set_title(f"reliability, test split, seeds pooled ({bins} bins)")
    _legend_right(ax)
    _style(ax, "both")
    return _save(fig, path)


def roc_per_class(
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]], dashed: set[str], path: Path
) -> Path:
    """One-vs-rest ROC curves per class: ``curves[arm][class]`` = (fpr, tpr, auc); one colour per class, the arms
    in ``dashed`` drawn dashed; the AUC of each curve in the legend."""
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    colors = plt.get_cmap("tab10")
    ax.plot([0, 1], [0, 1], color="#9aa5b1", lw=1, ls=":")
    for arm, per_class in curves.items():
        for i, (name, (fpr, tpr, auc)) in enumerate(per_class.items()):
            style = "--" if arm in dashed else "-"
            label = f"{name}, {ARM_LABELS.get(arm, arm).split(' (')[0]}: AUC {auc:.3f}"
            ax.plot(fpr, tpr, ls=style, lw=1.3, color=colors(i % 10), label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("one-vs-rest ROC per class, test split, seeds pooled")
    _legend_right(ax)
    _style(ax, "both")
    return _save(fig, path)
