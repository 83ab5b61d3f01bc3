"""The report's result sections (headline, per class, per site, confusion matrices, site head), each a
:class:`~tuner.report.render.Section` built from the aligned test predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainables.metrics import confusion_matrix
from tuner import stats
from tuner.report import plots
from tuner.report.comparison import ESTIMAND, FEW_SEEDS, Comparison, rate_intervals
from tuner.report.load import ARMS, Inputs
from tuner.report.render import Bullets, Figure, Heading, Section, Table, Text

TITLES = {
    "headline": "Headline: MTL vs single-task",
    "classes": "Per-class recall",
    "sites": "Lesion accuracy per body site",
    "confusion": "Confusion matrices",
    "site_head": "Site head",
}
BASELINE = {
    "ablation": (
        "The single-task baseline is the best MTL configuration with the site head removed, trained with the "
        "same seeds, data and schedule; it was not tuned on its own, which can favour MTL. An ablation, not a tuned "
        "baseline: `compare: {baseline: tuned}` tunes the single-task model with MTL's budget, the fairer test."
    ),
    "tuned": (
        "The single-task baseline was tuned with its own search (as hard as MTL) and retrained with the "
        "same seeds, data and schedule."
    ),
}


def fmt_ms(values) -> str:
    mean, sd = stats.mean_sd(values)
    return f"{mean:.3f} ± {sd:.3f}"


def fmt_points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _eq(p_text: str) -> str:
    return p_text if p_text.startswith("<") else f"= {p_text}"


def _primary(comparisons: list[Comparison]) -> Comparison:
    return next((c for c in comparisons if c.primary), comparisons[0])


def _headline_table(comparisons: list[Comparison]) -> Table:
    cols = ["test metric", "role", "MTL mean ± sd", "single-task mean ± sd", "MTL - single-task (points)", "95 % CI"]
    rows = [
        [
            c.name,
            "primary" if c.primary else "exploratory",
            fmt_ms(c.per_seed["mtl"]),
            fmt_ms(c.per_seed["single_task"]),
            fmt_points(c.diff),
            f"{fmt_points(c.low)} to {fmt_points(c.high)}",
            stats.format_p(c.p_value),
            "" if c.p_holm is None else stats.format_p(c.p_holm),
        ]
        for c in comparisons
    ]
    return Table([*cols, "p (permutation)", "p (Holm, exploratory)"], rows)


def _seed_table(inp: Inputs, comparisons: list[Comparison]) -> Table:
    cols = [f"{c.name} ({'MTL' if arm == 'mtl' else 'single'})" for c in comparisons for arm in ARMS]
    rows = [[s, *(f"{c.per_seed[arm][i]:.3f}" for c in comparisons for arm in ARMS)] for i, s in enumerate(inp.seeds)]
    return Table(["seed", *cols], rows)


def _explain(inp: Inputs, comparisons: list[Comparison], mc: dict, notes: list[str]) -> Bullets:
    method = "exact binomial" if mc["method"] == "exact" else "chi-square, continuity-corrected"
    p_mc = _eq(stats.format_p(mc["p_value"]))
    baseline = BASELINE.get(
        str(inp.summary.get("baseline_kind")), "summary.json does not say how the baseline was chosen."
    )
    main = _primary(comparisons)
    if inp.groups is None:
        units = f"the {len(inp.lesion)} test images (their lesion ids are not in the predictions: each image is "
        units += "its own group, which is too narrow when a lesion has several images)"
    else:
        units = f"the {len(np.unique(inp.groups))} lesion groups of the {len(inp.lesion)} test images"
    few = (
        [
            f"Only {len(inp.seeds)} seed(s): the seed-to-seed variance, and so the CI, is poorly estimated; "
            f"use at least {FEW_SEEDS} (`retrain.seeds`)."
        ]
        if len(inp.seeds) < FEW_SEEDS
        else []
    )
    return Bullets(
        [
            f"What is estimated: {ESTIMAND}. The CI is a two-level paired bootstrap: each resample draws the "
            f"{len(inp.seeds)} training runs (seeds) and {units} with replacement, the same draw for both models. "
            "The p-value is a permutation test that swaps the two models' predictions within each (seed, lesion) "
            "cell. Both use the mean over seeds of the difference; sd is over seeds.",
            *few,
            f"The verdict rests on one primary metric, the search objective ({main.name}); it needs both the CI to "
            "exclude 0 and p < 0.05. The other metrics are exploratory; their p-values are Holm-adjusted.",
            f"Exploratory: McNemar on accuracy, pooled over seeds: {mc['b']} predictions right only with MTL, "
            f"{mc['c']} right only with single-task; p {p_mc} ({method}). It treats every image and seed as "
            "independent, so this p is optimistic.",
            baseline,
            *notes,
        ]
    )


def headline(inp: Inputs, comparisons: list[Comparison], mc: dict, notes: list[str], out: Path) -> Section:
    main = _primary(comparisons)
    sentence = stats.verdict(
        main.diff, main.low, main.high, main.p_value, metric_name=main.name, test="paired permutation test"
    )
    label = {c.name: f"{c.name}\n({'primary' if c.primary else 'exploratory'})" for c in comparisons}
    fig = plots.headline(
        {label[c.name]: c.per_seed for c in comparisons},
        {label[c.name]: {"diff": c.diff, "low": c.low, "high": c.high} for c in comparisons},
        out / "headline.png",
    )
    caption = (
        "Test metrics per model (dots: seeds) and the paired difference with its 95 % two-level bootstrap CI "
        "(seeds and lesions resampled)"
    )
    return Section(
        TITLES["headline"],
        [
            Text(sentence, strong=True),
            _headline_table(comparisons),
            Figure(fig, caption),
            Heading("How to read this"),
            _explain(inp, comparisons, mc, notes),
            Heading("Per seed"),
            _seed_table(inp, comparisons),
        ],
    )


def _counts_by_seed(inp: Inputs, arm: str, fn, *args) -> tuple[np.ndarray, np.ndarray]:
    """(images per group, correct per seed x group) from a ``stats.*_counts`` function."""
    pairs = [fn(inp.lesion, pred, *args) for pred in inp.preds(arm)]
    return pairs[0][0], np.stack([c for _, c in pairs])


def _rate_rows(
    labels: list[str], n: np.ndarray, correct: dict[str, np.ndarray], intervals: list[dict | None]
) -> tuple[list, dict]:
    rates = {arm: np.where(n > 0, correct[arm] / np.maximum(n, 1), np.nan) for arm in ARMS}
    rows = []
    for j, label in enumerate(labels):
        cells = [label, int(n[j])]
        for arm in ARMS:
            cells += [
                ", ".join(str(int(k)) for k in correct[arm][:, j]),
                fmt_ms(rates[arm][:, j]) if n[j] else "n/a",
            ]
        ci = intervals[j]
        if ci is None:
            rows.append([*cells, "n/a", "n/a"])
        else:
            rows.append([*cells, fmt_points(ci["diff"]), f"{fmt_points(ci['low'])} to {fmt_points(ci['high'])}"])
    return rows, rates


def _rate_cols(group: str, rate: str) -> list[str]:
    return [
        group,
        "test images",
        "MTL correct (per seed)",
        f"MTL {rate}",
        "single-task correct (per seed)",
        f"single-task {rate}",
        f"Δ {rate} (points)",
        "95 % CI (exploratory)",
    ]


def per_class(inp: Inputs, out: Path) -> Section:
    k = len(inp.lesion_classes)
    counts = {arm: _counts_by_seed(inp, arm, stats.class_recall_counts, k) for arm in ARMS}
    n = counts["mtl"][0]
    intervals = rate_intervals(inp, [inp.lesion == c for c in range(k)])
    rows, rates = _rate_rows(inp.lesion_classes, n, {arm: c for arm, (_, c) in counts.items()}, intervals)
    fig = plots.grouped_rates(
        inp.lesion_classes,
        n,
        rates,
        "recall per lesion class (whisker: seed range)",
        "recall",
        out / "class_recall.png",
    )
    return Section(
        TITLES["classes"],
        [
            Text(
                "Counts, not only rates: for a rare class one image moves the recall by a lot. "
                "'correct (per seed)' lists how many of the class's test images each seed's model got right. "
                "The Δ's CI is the two-level bootstrap of the headline, per class: exploratory, not adjusted "
                "for the number of classes."
            ),
            Table(_rate_cols("class", "recall"), rows),
            Figure(fig, "Recall per class, MTL vs single-task"),
        ],
    )


def per_site(inp: Inputs, out: Path) -> Section:
    s = len(inp.site_classes)
    counts = {arm: _counts_by_seed(inp, arm, stats.site_accuracy_counts, inp.site, s) for arm in ARMS}
    n = counts["mtl"][0]
    keep = [j for j in range(s + 1) if n[j] > 0]  # the "missing" slot only when some site is missing
    labels = [[*inp.site_classes, "(missing)"][j] for j in keep]
    correct = {arm: c[:, keep] for arm, (_, c) in counts.items()}
    slot = np.where(inp.site < 0, s, inp.site)
    intervals = rate_intervals(inp, [slot == j for j in keep])
    rows, rates = _rate_rows(labels, n[keep], correct, intervals)
    fig = plots.grouped_rates(
        labels,
        n[keep],
        rates,
        "lesion accuracy per body site (whisker: seed range)",
        "lesion accuracy",
        out / "site_accuracy.png",
    )
    return Section(
        TITLES["sites"],
        [
            Text(
                "Where the site task should help: lesion-diagnosis accuracy of both models split by the "
                "image's true body site."
            ),
            Table(_rate_cols("site", "accuracy"), rows),
            Figure(fig, "Lesion accuracy per body site"),
        ],
    )


def confusion(inp: Inputs, out: Path) -> Section:
    k = len(inp.lesion_classes)
    zero = np.zeros((k, k), dtype=np.int64)
    cms = {arm: sum((confusion_matrix(inp.lesion, p, k) for p in inp.preds(arm)), zero) for arm in ARMS}
    fig = plots.confusion(cms, inp.lesion_classes, len(inp.seeds), out / "confusion.png")
    return Section(
        TITLES["confusion"],
        [
            Text(
                f"Rows: true class, columns: predicted; counts summed over the {len(inp.seeds)} seeds, "
                "colour = share of the row."
            ),
            Figure(fig, "Confusion matrices, MTL (left) and single-task (right)"),
        ],
    )


def site_head(inp: Inputs, table: pd.DataFrame) -> Section:
    known = int((inp.site >= 0).sum())
    rows = []
    for key, label in (("test/site_acc", "site accuracy"), ("test/site_bacc", "site balanced accuracy")):
        sel = table[(table["arm"] == "mtl") & (table["metric"] == key)].sort_values("seed")["value"]
        if len(sel):
            rows.append([label, fmt_ms(sel), ", ".join(f"{v:.3f}" for v in sel)])
    if not rows:
        return Section(TITLES["site_head"], [Text("The MTL predictions hold no site probabilities.")])
    return Section(
        TITLES["site_head"],
        [
            Text(
                f"The MTL model's body-site head on the {known} test images with a known site "
                f"({len(inp.site) - known} without one are left out). The single-task model has no site head."
            ),
            Table(["metric", "MTL mean ± sd", "per seed"], rows),
        ],
    )
