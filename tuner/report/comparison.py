"""The numbers of the report: the tidy per-run metrics table (recomputed from the per-image test predictions) and,
per headline metric, the paired comparison of MTL with single-task (:class:`Comparison`).

The design has two levels, training runs (seeds) and lesion groups: the CIs resample both (the estimand is the
expected difference for a new training run on new lesions from this population) and the permutation test swaps
the arms within (seed, lesion) cells. The primary metric (the search objective, on test) decides the verdict; the
other metrics are exploratory and their p-values Holm-adjusted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainables.metrics import lesion_metrics, prefixed, site_metrics
from tuner import stats
from tuner.report.load import ARMS, Inputs

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
    per_seed: dict[str, list[float]]  # arm -> value per seed
    diff: float
    low: float
    high: float
    p_value: float
    primary: bool = False  # the metric that decides the verdict (the objective)
    p_holm: float | None = None  # exploratory metrics: Holm-adjusted across them


def primary_key(inp: Inputs) -> str:
    """The test metric that decides the verdict: the search objective (``val/x`` -> ``test/x``)."""
    wanted = str(inp.summary.get("objective") or inp.experiment.tune.metric).replace("val/", "test/", 1)
    return wanted if any(key == wanted for key, *_ in HEADLINE) else HEADLINE[0][0]


def metrics_table(inp: Inputs) -> pd.DataFrame:
    """Tidy, one row per arm x seed x metric: test metrics from the predictions, val from metrics.json."""
    rows = []
    for arm in ARMS:
        for i, seed in enumerate(inp.seeds):
            values = prefixed(lesion_metrics(inp.lesion, inp.probs[arm][i], inp.lesion_classes), "test")
            if arm == "mtl" and inp.site_probs[i] is not None:
                values.update(prefixed(site_metrics(inp.site, inp.site_probs[i]), "test"))
            values.update({k: float(v) for k, v in (inp.metrics[arm][i].get("val") or {}).items()})
            rows += [{"arm": arm, "seed": seed, "metric": k, "value": float(v)} for k, v in values.items()]
    return pd.DataFrame(rows, columns=["arm", "seed", "metric", "value"])


def check_metrics_json(inp: Inputs, table: pd.DataFrame) -> list[str]:
    """Where a run's metrics.json disagrees with its own predictions (the report trusts the predictions)."""
    notes = []
    for arm in ARMS:
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
    """Per headline metric: per-seed values, the two-level paired bootstrap CI and the (seed, lesion)-cell
    permutation p of MTL - single-task; the primary metric first, the others with Holm-adjusted p-values."""
    out = []
    main = primary_key(inp)
    for key, name, fn, needs_probs in HEADLINE:
        a, b = (inp.probs[arm] if needs_probs else inp.preds(arm) for arm in ARMS)
        boot = stats.paired_bootstrap(inp.lesion, a, b, fn, n_boot=n_boot, seed=0, groups=inp.groups)
        perm = stats.paired_permutation(inp.lesion, a, b, fn, n_perm=n_perm, seed=0, groups=inp.groups)
        sel = table[table["metric"] == key]
        per_seed = {arm: [float(v) for v in sel[sel["arm"] == arm].sort_values("seed")["value"]] for arm in ARMS}
        out.append(
            Comparison(key, name, per_seed, boot["diff"], boot["low"], boot["high"], perm["p_value"], key == main)
        )
    out.sort(key=lambda c: not c.primary)
    exploratory = [c for c in out if not c.primary]
    for c, p in zip(exploratory, stats.holm([c.p_value for c in exploratory]), strict=True):
        c.p_holm = p
    return out


def ci_record(inp: Inputs, comparisons: list[Comparison]) -> dict:
    """``report/ci.json``: per headline metric, MTL - single-task with its CI and p-values (what the export's
    ``metrics.json`` and model card quote)."""
    return {
        c.key: {
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
        for c in comparisons
    }


def rate_intervals(inp: Inputs, masks: list[np.ndarray], n_boot: int = N_BOOT) -> list[dict | None]:
    """Per mask (e.g. the test images of one class, or of one body site): MTL - single-task lesion accuracy on
    those images with its two-level bootstrap CI (``{diff, low, high}``), None for an empty mask."""
    preds = {arm: inp.preds(arm) for arm in ARMS}
    out: list[dict | None] = []
    for mask in masks:
        if not mask.any():
            out.append(None)
            continue
        groups = None if inp.groups is None else inp.groups[mask]
        a, b = ([p[mask] for p in preds[arm]] for arm in ARMS)
        out.append(stats.paired_bootstrap(inp.lesion[mask], a, b, stats.accuracy, n_boot, seed=0, groups=groups))
    return out


def pooled_mcnemar(inp: Inputs) -> dict:
    correct = {arm: np.concatenate([p == inp.lesion for p in inp.preds(arm)]) for arm in ARMS}
    return stats.mcnemar(correct["mtl"], correct["single_task"])
