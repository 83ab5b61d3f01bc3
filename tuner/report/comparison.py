"""The numbers of the report: the tidy per-run metrics table (recomputed from the per-image test predictions) and,
per compared arm and headline metric, the paired comparison of the arm with single-task (:class:`Comparison`).

The design has two levels, training runs (seeds) and lesion groups: the CIs resample both (the estimand is the
expected difference for a new training run on new lesions from this population) and the permutation test swaps
the two arms within (seed, lesion) cells. The primary metric (the search objective, on test) decides each arm's
verdict; with several arms compared with single-task, their primary p-values are Holm-adjusted together (one
family: the arms' primary comparisons), and the adjusted p decides. The other metrics are exploratory; their
p-values are Holm-adjusted across every arm and metric."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainables.metrics import lesion_metrics, prefixed, site_metrics
from tuner import stats
from tuner.arms import MTL, REFERENCE
from tuner.report.load import Inputs

N_BOOT = 2000
N_PERM = 2000
TOLERANCE = 1e-6  # metrics.json vs the predictions: larger gaps are reported
# (results key, name in prose, fast metric, needs probabilities)
HEADLINE = (
    ("test/lesion_bacc", "balanced accuracy", stats.balanced_accuracy, False),
    ("test/lesion_auc", "macro AUC", stats.macro_auc, True),
    ("test/lesion_acc", "accuracy", stats.accuracy, False),
)


FEW_SEEDS = 5  # below this many seeds the seed-to-seed variance is poorly estimated (the report says so)
ESTIMAND = "the expected difference for a new training run, on new lesions from this population"


@dataclass
class Comparison:
    key: str
    name: str
    per_seed: dict[str, list[float]]  # arm -> value per seed (the compared arm and single_task)
    diff: float
    low: float
    high: float
    p_value: float
    primary: bool = False  # the metric that decides the verdict (the objective)
    p_holm: float | None = None  # Holm-adjusted within its family (exploratory: always; primary: with 2+ arms)
    arm: str = MTL  # the arm compared with single-task

    @property
    def p_decides(self) -> float:
        """The p-value the verdict uses: Holm-adjusted across the arms when several are compared."""
        return self.p_value if self.p_holm is None else self.p_holm


def primary_key(inp: Inputs) -> str:
    """The test metric that decides the verdict: the search objective (``val/x`` -> ``test/x``)."""
    wanted = str(inp.summary.get("objective") or inp.experiment.tune.metric).replace("val/", "test/", 1)
    return wanted if any(key == wanted for key, *_ in HEADLINE) else HEADLINE[0][0]


def metrics_table(inp: Inputs) -> pd.DataFrame:
    """Tidy, one row per arm x seed x metric: test metrics from the predictions, val from metrics.json."""
    rows = []
    for arm in inp.arms:
        for i, seed in enumerate(inp.seeds):
            values = prefixed(lesion_metrics(inp.lesion, inp.probs[arm][i], inp.lesion_classes), "test")
            site = inp.site_probs[arm][i]
            if site is not None:
                values.update(prefixed(site_metrics(inp.site, site), "test"))
            values.update({k: float(v) for k, v in (inp.metrics[arm][i].get("val") or {}).items()})
            rows += [{"arm": arm, "seed": seed, "metric": k, "value": float(v)} for k, v in values.items()]
    return pd.DataFrame(rows, columns=["arm", "seed", "metric", "value"])


def check_metrics_json(inp: Inputs, table: pd.DataFrame) -> list[str]:
    """Where a run's metrics.json disagrees with its own predictions (the report trusts the predictions)."""
    notes = []
    for arm in inp.arms:
        for i, seed in enumerate(inp.seeds):
            mine = table[(table["arm"] == arm) & (table["seed"] == seed)].set_index("metric")["value"]
            for key, value in (inp.metrics[arm][i].get("test") or {}).items():
                if key in mine and abs(float(value) - mine[key]) > TOLERANCE:
                    notes.append(
                        f"{arm}/seed_{seed}/metrics.json says {key} = {float(value):.4f}; its predictions "
                        f"give {mine[key]:.4f} (this report uses the predictions)"
                    )
    return notes


def compare(inp: Inputs, table: pd.DataFrame, n_boot: int = N_BOOT, n_perm: int = N_PERM) -> list[Comparison]:
    """Per compared arm and headline metric: per-seed values, the two-level paired bootstrap CI and the
    (seed, lesion)-cell permutation p of arm - single-task. Order: each arm's primary metric (in the arms' order),
    then the exploratory ones. Holm: across the arms' primary p-values when 2+ arms are compared, and across every
    exploratory p-value."""
    out = []
    main = primary_key(inp)
    for arm in inp.compared:
        for key, name, fn, needs_probs in HEADLINE:
            a, b = (inp.probs[x] if needs_probs else inp.preds(x) for x in (arm, REFERENCE))
            boot = stats.paired_bootstrap(inp.lesion, a, b, fn, n_boot=n_boot, seed=0, groups=inp.groups)
            perm = stats.paired_permutation(inp.lesion, a, b, fn, n_perm=n_perm, seed=0, groups=inp.groups)
            sel = table[table["metric"] == key]
            per_seed = {
                x: [float(v) for v in sel[sel["arm"] == x].sort_values("seed")["value"]] for x in (arm, REFERENCE)
            }
            out.append(
                Comparison(
                    key, name, per_seed, boot["diff"], boot["low"], boot["high"], perm["p_value"], key == main, arm=arm
                )
            )
    out.sort(key=lambda c: not c.primary)  # stable: the arms' order within each role
    primaries = [c for c in out if c.primary]
    if len(primaries) > 1:
        for c, p in zip(primaries, stats.holm([c.p_value for c in primaries]), strict=True):
            c.p_holm = p
    exploratory = [c for c in out if not c.primary]
    for c, p in zip(exploratory, stats.holm([c.p_value for c in exploratory]), strict=True):
        c.p_holm = p
    return out


def _row(inp: Inputs, c: Comparison) -> dict:
    return {
        "arm": c.arm,
        "diff": c.diff,
        "low": c.low,
        "high": c.high,
        "p_value": c.p_value,
        "p_holm": c.p_holm,
        "role": "primary" if c.primary else "exploratory",
        "baseline": inp.summary.get("baseline_kind"),
        "seeds": len(inp.seeds),
        "estimand": ESTIMAND,
    }


def ci_record(inp: Inputs, comparisons: list[Comparison]) -> dict:
    """``report/ci.json``: per headline metric, MTL - single-task (or, without an MTL arm, the first compared arm's
    difference) with its CI and p-values (what the export's ``metrics.json`` and model card quote)."""
    arm = MTL if MTL in inp.compared else inp.compared[0]
    return {c.key: _row(inp, c) for c in comparisons if c.arm == arm}


def arms_record(inp: Inputs, comparisons: list[Comparison]) -> dict:
    """``report/arms.json``: per compared arm, per headline metric, arm - single-task with its CI and p-values."""
    return {arm: {c.key: _row(inp, c) for c in comparisons if c.arm == arm} for arm in inp.compared}


def rate_intervals(inp: Inputs, masks: list[np.ndarray], arm: str = MTL, n_boot: int = N_BOOT) -> list[dict | None]:
    """Per mask (e.g. the test images of one class, or of one body site): arm - single-task lesion accuracy on
    those images with its two-level bootstrap CI (``{diff, low, high}``), None for an empty mask."""
    preds = {x: inp.preds(x) for x in (arm, REFERENCE)}
    out: list[dict | None] = []
    for mask in masks:
        if not mask.any():
            out.append(None)
            continue
        groups = None if inp.groups is None else inp.groups[mask]
        a, b = ([p[mask] for p in preds[x]] for x in (arm, REFERENCE))
        out.append(stats.paired_bootstrap(inp.lesion[mask], a, b, stats.accuracy, n_boot, seed=0, groups=groups))
    return out


def pooled_mcnemar(inp: Inputs) -> dict[str, dict]:
    """Per compared arm: McNemar on accuracy against single-task, pooled over seeds."""
    correct = {arm: np.concatenate([p == inp.lesion for p in inp.preds(arm)]) for arm in inp.arms}
    return {arm: stats.mcnemar(correct[arm], correct[REFERENCE]) for arm in inp.compared}
