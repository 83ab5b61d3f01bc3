"""``build_report(experiment_dir)``: read the experiment's outputs, compute every statistic from the per-image
test predictions, draw the figures and write ``report/{report.html, report.md, results.parquet, *.png}``.

    python -c "from tuner.report import build_report; print(build_report('results/smoke'))"
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainables import storage
from trainables.metrics import lesion_metrics, prefixed, site_metrics
from tuner import stats
from tuner.report import context, render, sections
from tuner.report.load import ARMS, Inputs, load_inputs

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


def results_table(inp: Inputs) -> pd.DataFrame:
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


def _subtitle(inp: Inputs) -> str:
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f"experiment `{inp.name}` · {len(inp.lesion)} test images · seeds {', '.join(map(str, inp.seeds))} · "
        f"objective `{inp.summary.get('objective', 'val/lesion_bacc')}` · written {when}"
    )


def build_report(experiment_dir: str | Path, n_boot: int = N_BOOT, n_perm: int = N_PERM) -> Path:
    """Write the report under ``<experiment_dir>/report/`` and return the path of ``report.html``.

    ``n_boot``/``n_perm``: bootstrap resamples and permutations of the paired statistics (fewer: faster,
    coarser).
    """
    inp = load_inputs(experiment_dir)
    out = inp.experiment_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for partial in out.glob(".*.tmp*"):  # left by a killed compare (every file here is written by temp + rename)
        partial.unlink(missing_ok=True)
    table = results_table(inp)
    storage.write_parquet(str(out / "results.parquet"), table)  # atomic: a killed compare leaves no half file
    comparisons = compare(inp, table, n_boot, n_perm)
    notes = check_metrics_json(inp, table)
    parts = [
        sections.headline(inp, comparisons, pooled_mcnemar(inp), notes, out),
        sections.per_class(inp, out),
        sections.per_site(inp, out),
        sections.confusion(inp, out),
        sections.site_head(inp, table),
        context.search(inp, out),
        context.data(inp, out),
        context.reproduction(inp),
    ]
    title, subtitle = f"skintune report: {inp.name}", _subtitle(inp)
    storage.write_text(str(out / "report.md"), render.markdown(title, subtitle, parts))
    storage.write_text(str(out / "report.html"), render.html_page(title, subtitle, parts))
    return out / "report.html"
