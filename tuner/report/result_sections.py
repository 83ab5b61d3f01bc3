"""The report's result sections (headline, per class, per site, confusion matrices, site head), each a
:class:`~tuner.report.render.Section` built from the aligned test predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from trainables import calibration as calib
from trainables.metrics import confusion_matrix
from tuner import arms as arms_mod
from tuner import stats
from tuner.arms import MTL, REFERENCE
from tuner.report import plots
from tuner.report.comparison import ESTIMAND, FEW_SEEDS, Comparison, rate_intervals
from tuner.report.load import Inputs
from tuner.report.render import Bullets, Figure, Heading, Section, Table, Text

TITLES = {
    "headline": "Headline: MTL vs single-task",  # the two-arm comparison's; see headline_title
    "classes": "Per-class recall",
    "sites": "Lesion accuracy per body site",
    "confusion": "Confusion matrices",
    "site_head": "Site head",
    "calibration": "Calibration and test evaluation",
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
ARMS_BASELINE = {  # with more arms than MTL and single-task
    "ablation": (
        "Ablation: every arm is the best configuration of the experiment's own search ({primary}) with the site "
        "head and the metadata inputs switched to the arm's, trained with the same seeds, data and schedule. Only "
        "that arm was tuned, which can favour it; `compare: {{baseline: tuned}}` gives each arm a search of its own "
        "with the same budget, the fairer test."
    ),
    "tuned": (
        "Each arm was tuned with a search of its own with the same budget, sampler, seed and data (the "
        "experiment's search space turned into the arm's), and retrained with the same seeds, data and schedule."
    ),
}


def fmt_ms(values) -> str:
    mean, sd = stats.mean_sd(values)
    return f"{mean:.3f} ± {sd:.3f}"


def fmt_points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _eq(p_text: str) -> str:
    return p_text if p_text.startswith("<") else f"= {p_text}"


def _label(arm: str) -> str:
    return arms_mod.label(arm)


def _short(arm: str) -> str:
    """An arm in a per-seed column header (MTL, single, metadata input, ...)."""
    return "single" if arm == REFERENCE else _label(arm)


def headline_title(inp: Inputs) -> str:
    if inp.compared == (MTL,):
        return TITLES["headline"]
    if len(inp.compared) == 1:
        return f"Headline: {_label(inp.compared[0])} vs single-task"
    return "Headline: each arm vs single-task"


def _primary(comparisons: list[Comparison], arm: str | None = None) -> Comparison:
    mine = [c for c in comparisons if arm is None or c.arm == arm]
    return next((c for c in mine if c.primary), mine[0])


def _comparison_cells(c: Comparison) -> list[str]:
    """One comparison's cells from its metric to its Holm p: the same in the two-arm and the several-arm table."""
    return [
        c.name,
        "primary" if c.primary else "exploratory",
        fmt_ms(c.per_seed[c.arm]),
        fmt_ms(c.per_seed[REFERENCE]),
        fmt_points(c.diff),
        f"{fmt_points(c.low)} to {fmt_points(c.high)}",
        stats.format_p(c.p_value),
        "" if c.p_holm is None else stats.format_p(c.p_holm),
    ]


def _two_arm_table(comparisons: list[Comparison]) -> Table:
    name = _label(comparisons[0].arm)
    cols = [
        "test metric",
        "role",
        f"{name} mean ± sd",
        "single-task mean ± sd",
        f"{name} - single-task (points)",
        "95 % CI",
        "p (permutation)",
        "p (Holm, exploratory)",
    ]
    return Table(cols, [_comparison_cells(c) for c in comparisons])


def _arms_table(comparisons: list[Comparison]) -> Table:
    """One row per (arm, metric): the arm against single-task; primary rows first."""
    cols = [
        "arm",
        "test metric",
        "role",
        "arm mean ± sd",
        "single-task mean ± sd",
        "arm - single-task (points)",
        "95 % CI",
        "p (permutation)",
        "p (Holm)",
    ]
    return Table(cols, [[_label(c.arm), *_comparison_cells(c)] for c in comparisons])


def needs_table(inp: Inputs) -> Table:
    """What each arm trains with and needs at inference (image only, or image plus patient metadata)."""
    configs = inp.summary.get("configs") or {}
    rows = []
    for arm in inp.arms:
        spec = arms_mod.ARMS[arm]
        needs = arms_mod.needs(configs[arm]) if arm in configs else spec.inputs
        target = "lesion + body site (auxiliary head)" if spec.multitask else "lesion only"
        rows.append([f"{_label(arm)} (`{arm}`)", target, needs])
    return Table(["arm", "trained targets", "needs at inference"], rows)


def _seed_table(inp: Inputs, comparisons: list[Comparison]) -> Table:
    metrics = list(dict.fromkeys((c.key, c.name) for c in comparisons))
    per_seed: dict[tuple[str, str], list[float]] = {}
    for c in comparisons:
        for arm, values in c.per_seed.items():
            per_seed[c.key, arm] = values
    cols = [f"{name} ({_short(arm)})" for _, name in metrics for arm in inp.arms]
    rows = [
        [s, *(f"{per_seed[key, arm][i]:.3f}" for key, _ in metrics for arm in inp.arms)]
        for i, s in enumerate(inp.seeds)
    ]
    return Table(["seed", *cols], rows)


def _baseline_text(inp: Inputs) -> str:
    kind = str(inp.summary.get("baseline_kind"))
    if inp.compared == (MTL,):
        return BASELINE.get(kind, "summary.json does not say how the baseline was chosen.")
    primary = _label(str(inp.summary.get("primary_arm") or MTL))
    text = ARMS_BASELINE.get(kind, "summary.json does not say how the arms' configurations were chosen.")
    return text.format(primary=primary)


def _explain(inp: Inputs, comparisons: list[Comparison], mc: dict[str, dict], notes: list[str]) -> Bullets:
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
    several = len(inp.compared) > 1
    if several:
        names = ", ".join(_label(a) for a in inp.compared)
        decides = (
            f"Each arm ({names}) is compared with single-task. Each verdict rests on one primary metric, the search "
            f"objective ({main.name}); it needs both the CI to exclude 0 and p < 0.05, where p is Holm-adjusted over "
            f"the {len(inp.compared)} arms' primary comparisons (the family-wise error of the arm comparisons is "
            "5 %; the CIs are not adjusted). The other metrics are exploratory; their p-values are Holm-adjusted "
            "over every arm and metric."
        )
    else:
        decides = (
            f"The verdict rests on one primary metric, the search objective ({main.name}); it needs both the CI to "
            "exclude 0 and p < 0.05. The other metrics are exploratory; their p-values are Holm-adjusted."
        )
    mcnemar = []
    for arm, m in mc.items():
        method = "exact binomial" if m["method"] == "exact" else "chi-square, continuity-corrected"
        mcnemar.append(
            f"{m['b']} predictions right only with {_label(arm)}, {m['c']} right only with single-task; "
            f"p {_eq(stats.format_p(m['p_value']))} ({method})"
        )
    return Bullets(
        [
            f"What is estimated: {ESTIMAND}. The CI is a two-level paired bootstrap: each resample draws the "
            f"{len(inp.seeds)} training runs (seeds) and {units} with replacement, the same draw for both models. "
            "The p-value is a permutation test that swaps the two models' predictions within each (seed, lesion) "
            "cell. Both use the mean over seeds of the difference; sd is over seeds.",
            *few,
            decides,
            f"Exploratory: McNemar on accuracy, pooled over seeds: {'; '.join(mcnemar)}. It treats every image and "
            "seed as independent, so this p is optimistic.",
            _baseline_text(inp),
            *notes,
        ]
    )


def _verdict(c: Comparison, several: int) -> str:
    test = "paired permutation test" + (f" (Holm-adjusted over {several} arms)" if c.p_holm is not None else "")
    sentence = stats.verdict(c.diff, c.low, c.high, c.p_decides, metric_name=c.name, test=test)
    return sentence if c.arm == MTL else sentence.replace("MTL", _label(c.arm))


def headline(inp: Inputs, comparisons: list[Comparison], mc: dict[str, dict], notes: list[str], out: Path) -> Section:
    sentences = [Text(_verdict(_primary(comparisons, arm), len(inp.compared)), strong=True) for arm in inp.compared]
    several = len(inp.compared) > 1
    metric_label = {c.key: f"{c.name}\n({'primary' if c.primary else 'exploratory'})" for c in comparisons}
    per_seed: dict[str, dict[str, list[float]]] = {}
    diffs: dict[str, dict[str, dict]] = {}
    for c in comparisons:
        per_seed.setdefault(metric_label[c.key], {}).update(c.per_seed)
        diffs.setdefault(metric_label[c.key], {})[c.arm] = {"diff": c.diff, "low": c.low, "high": c.high}
    fig = plots.headline(per_seed, diffs, out / "headline.png", order=list(inp.arms))
    caption = (
        "Test metrics per model (dots: seeds) and the paired difference with single-task, with its 95 % two-level "
        "bootstrap CI (seeds and lesions resampled)"
    )
    return Section(
        headline_title(inp),
        [
            *sentences,
            _arms_table(comparisons) if several else _two_arm_table(comparisons),
            Figure(fig, caption),
            Heading("What each arm needs at inference"),
            needs_table(inp),
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
    inp: Inputs, labels: list[str], n: np.ndarray, correct: dict[str, np.ndarray], intervals: dict[str, list]
) -> tuple[list, dict]:
    """Rows of a per-class or per-site table. Two arms: per arm the correct counts per seed and the rate, then the
    difference and its CI; more arms: per arm the rate, then per compared arm the difference with its CI."""
    rates = {arm: np.where(n > 0, correct[arm] / np.maximum(n, 1), np.nan) for arm in inp.arms}
    two = len(inp.compared) == 1
    rows = []
    for j, label in enumerate(labels):
        cells = [label, int(n[j])]
        for arm in inp.arms:
            if two:
                cells.append(", ".join(str(int(k)) for k in correct[arm][:, j]))
            cells.append(fmt_ms(rates[arm][:, j]) if n[j] else "n/a")
        for arm in inp.compared:
            ci = intervals[arm][j]
            if two:
                cells += ["n/a", "n/a"] if ci is None else [fmt_points(ci["diff"]), _ci(ci)]
            else:
                cells.append("n/a" if ci is None else f"{fmt_points(ci['diff'])} ({_ci(ci)})")
        rows.append(cells)
    return rows, rates


def _ci(ci: dict) -> str:
    return f"{fmt_points(ci['low'])} to {fmt_points(ci['high'])}"


def _rate_cols(inp: Inputs, group: str, rate: str) -> list[str]:
    if len(inp.compared) == 1:
        arm = _label(inp.compared[0])
        return [
            group,
            "test images",
            f"{arm} correct (per seed)",
            f"{arm} {rate}",
            "single-task correct (per seed)",
            f"single-task {rate}",
            f"Δ {rate} (points)",
            "95 % CI (exploratory)",
        ]
    return [
        group,
        "test images",
        *(f"{_label(arm)} {rate}" for arm in inp.arms),
        *(f"Δ {_label(arm)} (points, 95 % CI, exploratory)" for arm in inp.compared),
    ]


def _vs(inp: Inputs) -> str:
    return ", ".join(_label(a) for a in inp.arms[:-1]) + f" and {_label(inp.arms[-1])}"


def per_class(inp: Inputs, out: Path) -> Section:
    k = len(inp.lesion_classes)
    counts = {arm: _counts_by_seed(inp, arm, stats.class_recall_counts, k) for arm in inp.arms}
    n = counts[inp.arms[0]][0]
    masks = [inp.lesion == c for c in range(k)]
    intervals = {arm: rate_intervals(inp, masks, arm) for arm in inp.compared}
    correct = {arm: c for arm, (_, c) in counts.items()}
    rows, rates = _rate_rows(inp, inp.lesion_classes, n, correct, intervals)
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
                + (
                    "'correct (per seed)' lists how many of the class's test images each seed's model got right. "
                    if len(inp.compared) == 1
                    else ""
                )
                + "The Δ's CI is the two-level bootstrap of the headline, per class: exploratory, not adjusted "
                "for the number of classes."
            ),
            Table(_rate_cols(inp, "class", "recall"), rows),
            Figure(fig, f"Recall per class, {_vs(inp)}"),
        ],
    )


def per_site(inp: Inputs, out: Path) -> Section:
    s = len(inp.site_classes)
    counts = {arm: _counts_by_seed(inp, arm, stats.site_accuracy_counts, inp.site, s) for arm in inp.arms}
    n = counts[inp.arms[0]][0]
    keep = [j for j in range(s + 1) if n[j] > 0]  # the "missing" slot only when some site is missing
    labels = [[*inp.site_classes, "(missing)"][j] for j in keep]
    correct = {arm: c[:, keep] for arm, (_, c) in counts.items()}
    slot = np.where(inp.site < 0, s, inp.site)
    masks = [slot == j for j in keep]
    intervals = {arm: rate_intervals(inp, masks, arm) for arm in inp.compared}
    rows, rates = _rate_rows(inp, labels, n[keep], correct, intervals)
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
                "Where the site should help (as a target or as an input): lesion-diagnosis accuracy of each model "
                "split by the image's true body site."
            ),
            Table(_rate_cols(inp, "site", "accuracy"), rows),
            Figure(fig, "Lesion accuracy per body site"),
        ],
    )


def confusion(inp: Inputs, out: Path) -> Section:
    k = len(inp.lesion_classes)
    zero = np.zeros((k, k), dtype=np.int64)
    cms = {arm: sum((confusion_matrix(inp.lesion, p, k) for p in inp.preds(arm)), zero) for arm in inp.arms}
    fig = plots.confusion(cms, inp.lesion_classes, len(inp.seeds), out / "confusion.png")
    return Section(
        TITLES["confusion"],
        [
            Text(
                f"Rows: true class, columns: predicted; counts summed over the {len(inp.seeds)} seeds, "
                "colour = share of the row."
            ),
            Figure(fig, f"Confusion matrices, left to right: {_vs(inp)}"),
        ],
    )


def site_head(inp: Inputs, table: pd.DataFrame) -> Section:
    known = int((inp.site >= 0).sum())
    rows = []
    heads = [arm for arm in inp.arms if arms_mod.ARMS[arm].multitask]
    for key, label in (("test/site_acc", "site accuracy"), ("test/site_bacc", "site balanced accuracy")):
        for arm in heads:
            sel = table[(table["arm"] == arm) & (table["metric"] == key)].sort_values("seed")["value"]
            if len(sel):
                rows.append([label, _label(arm), fmt_ms(sel), ", ".join(f"{v:.3f}" for v in sel)])
    if not rows:
        return Section(TITLES["site_head"], [Text("No arm's predictions hold site probabilities.")])
    without = [_label(a) for a in inp.arms if a not in heads]
    return Section(
        TITLES["site_head"],
        [
            Text(
                f"The body-site head of the arms that train one, on the {known} test images with a known site "
                f"({len(inp.site) - known} without one are left out). {' and '.join(without)} ha"
                f"{'s' if len(without) == 1 else 've'} no site head. With metadata inputs the site head still "
                "predicts from the image features only."
            ),
            Table(["metric", "arm", "mean ± sd", "per seed"], rows),
        ],
    )


def _views(n: int) -> str:
    return "off (1 view)" if n <= 1 else f"on ({n} views: flips and 90-degree rotations, softmax averaged)"


def tta_text(metrics: dict[str, list[dict]]) -> str:
    """One line: whether the retrain runs' test evaluation used test-time augmentation, and on which device (each
    run's ``metrics.json`` ``test_eval``; runs written before it was recorded: "not recorded")."""
    runs = [m for per_arm in metrics.values() for m in per_arm]
    recorded = [m["test_eval"] for m in runs if isinstance(m.get("test_eval"), dict)]
    if not recorded:
        return (
            "Test-time augmentation: not recorded (these runs' metrics.json predate the `test_eval` record; "
            "rerun `skintune retrain` to record it)."
        )
    views = sorted({int(r.get("tta", 1)) for r in recorded})
    devices = sorted({str(r.get("device", "?")) for r in recorded})
    tta = _views(views[0]) if len(views) == 1 else "mixed: " + ", ".join(_views(v) for v in views)
    missing = len(runs) - len(recorded)
    tail = f"; not recorded for {missing} of {len(runs)} runs" if missing else ""
    return f"Test-time augmentation: {tta}; test evaluation on {', '.join(f'`{d}`' for d in devices)}{tail}."


def calibration_numbers(inp: Inputs, bins: int = calib.ECE_BINS) -> dict[str, dict[str, list[float]]]:
    """``arm -> {"ece": [per seed], "nll": [per seed]}`` of the lesion head's raw test probabilities."""
    return {
        arm: {
            "ece": [calib.ece(p, inp.lesion, bins) for p in inp.probs[arm]],
            "nll": [calib.nll(p, inp.lesion) for p in inp.probs[arm]],
        }
        for arm in inp.arms
    }


def primary_of(inp: Inputs) -> str:
    """The arm of the experiment's own search as summary.json names it; else MTL, else the first compared arm."""
    named = inp.summary.get("primary_arm")
    if named in inp.compared:
        return str(named)
    return MTL if MTL in inp.compared else inp.compared[0]


def _pooled(inp: Inputs, arm: str) -> tuple[np.ndarray, np.ndarray]:
    """An arm's test probabilities and labels, all seeds stacked (rows with a non-finite probability left out)."""
    probs, labels = np.concatenate(inp.probs[arm]), np.tile(inp.lesion, len(inp.seeds))
    finite = np.isfinite(probs).all(axis=1)
    return probs[finite], labels[finite]


def _roc(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    out = {}
    for c, name in enumerate(classes):
        truth = labels == c
        if 0 < truth.sum() < len(truth):  # a class with no positive (or no negative) test image has no curve
            fpr, tpr, _ = roc_curve(truth, probs[:, c])
            out[name] = (fpr, tpr, float(roc_auc_score(truth, probs[:, c])))
    return out


def calibration(inp: Inputs, out: Path) -> Section:
    numbers = calibration_numbers(inp)
    rows = [
        [
            _label(arm),
            fmt_ms(numbers[arm]["ece"]),
            fmt_ms(numbers[arm]["nll"]),
            ", ".join(f"{v:.3f}" for v in numbers[arm]["ece"]),
        ]
        for arm in inp.arms
    ]
    bins = calib.ECE_BINS
    reliability = plots.reliability({arm: _pooled(inp, arm) for arm in inp.arms}, bins, out / "reliability.png")
    primary = primary_of(inp)
    curves = {arm: _roc(*_pooled(inp, arm), inp.lesion_classes) for arm in (primary, REFERENCE)}
    roc = plots.roc_per_class(curves, {REFERENCE}, out / "roc.png")
    return Section(
        TITLES["calibration"],
        [
            Text(tta_text(inp.metrics)),
            Text(
                "Calibration of the lesion head's test probabilities as retrain wrote them: raw, before any "
                "temperature scaling (`skintune export` fits a temperature T on the validation split and stores it "
                "with the model; predict and evaluate divide the logits by it). ECE: expected calibration error of "
                f"the top class over {bins} equal-width confidence bins (0 = perfectly calibrated); NLL: mean "
                "negative log-likelihood of the true class (lower is better). Mean ± sd over seeds."
            ),
            Table(["arm", "ECE", "NLL", "ECE per seed"], rows),
            Figure(reliability, f"Reliability diagram, {_vs(inp)}, seeds pooled; below the diagonal: over-confident"),
            Figure(
                roc,
                f"One-vs-rest ROC per class: {_label(primary)} (solid) and {_label(REFERENCE)} (dashed), seeds "
                "pooled; AUC per class in the legend",
            ),
        ],
    )
