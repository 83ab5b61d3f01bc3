"""The numbers of the report: the tidy per-run metrics table (recomputed from the per-image test predictions) and,
per headline metric, the paired comparison of MTL with single-task (:class:`Comparison`)."""

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


@dataclass
class Comparison:
    key: str
    name: str
    per_seed: dict[str, list[float]]  # arm -> value per seed
    diff: float
    low: float
    high: float
    p_value: float


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
    """Per headline metric: per-seed values, paired bootstrap CI and permutation p of MTL - single-task."""
    out = []
    for key, name, fn, needs_probs in HEADLINE:
        a, b = (inp.probs[arm] if needs_probs else inp.preds(arm) for arm in ARMS)
        boot = stats.paired_bootstrap(inp.lesion, a, b, fn, n_boot=n_boot, seed=0)
        perm = stats.paired_permutation(inp.lesion, a, b, fn, n_perm=n_perm, seed=0)
        sel = table[table["metric"] == key]
        per_seed = {arm: [float(v) for v in sel[sel["arm"] == arm].sort_values("seed")["value"]] for arm in ARMS}
        out.append(Comparison(key, name, per_seed, boot["diff"], boot["low"], boot["high"], perm["p_value"]))
    return out


def pooled_mcnemar(inp: Inputs) -> dict:
    correct = {arm: np.concatenate([p == inp.lesion for p in inp.preds(arm)]) for arm in ARMS}
    return stats.mcnemar(correct["mtl"], correct["single_task"])
