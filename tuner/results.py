"""The search's results table: one row per trial, written as ``tune/results.parquet`` and ``tune/results.csv``;
and its record, ``tune/search.json`` (its budget, the data it ran on, what it spent).

Columns: ``trial_id``, ``status`` (completed | stopped_early | diverged | error), ``epochs``, ``best_objective``,
``last_objective``, ``best_epoch``, ``checkpoint_path`` (the best epoch's Train checkpoint), ``wall_s``,
``error``, and one ``param/<name>`` column per sampled parameter. Each other tuned arm's search writes the same
under ``tune_<arm>/`` (``tune_single_task/`` for the single-task baseline).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd

from trainables import storage
from trainables.errors import UserError
from tuner.arms import primary_arm
from tuner.config import ExperimentConfig

SEARCH_RECORD = "search.json"
# what makes two searches' effort equal: the budget, how it is spent, and the data (a mismatch is refused)
BUDGET_FIELDS = (
    "num_samples",
    "max_epochs",
    "max_trial_epochs",
    "metric",
    "mode",
    "sampler",
    "seed",
    "tpe_startup_trials",
    "tpe_good_fraction",
    "scheduler",
    "grace_period",
    "reduction_factor",
    "dataset_fingerprint",
)


def _status(result, epochs: int, max_epochs: int) -> str:
    if result.error is not None:
        return "error"
    if (result.metrics or {}).get("diverged", 0.0) >= 1.0:
        return "diverged"
    return "completed" if epochs >= max_epochs else "stopped_early"


def trial_row(result, exp: ExperimentConfig) -> dict:
    metric, mode = exp.tune.metric, exp.tune.mode
    history = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    last = result.metrics or {}
    epochs = int(last.get("epoch", 0) or 0)
    row = {
        "trial_id": last.get("trial_id") or Path(str(result.path)).name,
        "status": _status(result, epochs, exp.tune.max_epochs),
        "epochs": epochs,
        "last_objective": float(last.get(metric, math.nan)),
        "best_objective": math.nan,
        "best_epoch": 0,
        "checkpoint_path": None,
        "wall_s": float(last.get("time_total_s", math.nan)),
        "error": None if result.error is None else str(result.error).splitlines()[0][:300],
        "trial_path": str(result.path),
    }
    if metric in history and history[metric].notna().any():
        best = history[metric].idxmax() if mode == "max" else history[metric].idxmin()
        row["best_objective"] = float(history.loc[best, metric])
        row["best_epoch"] = int(history.loc[best].get("epoch", 0) or 0)
        if "checkpoint_path" in history:
            row["checkpoint_path"] = history.loc[best, "checkpoint_path"]
    row.update({f"param/{k}": v for k, v in (result.config or {}).items()})
    return row


def trials_table(grid, exp: ExperimentConfig) -> pd.DataFrame:
    """One row per trial of the search's ResultGrid (:func:`trial_row`), best objective first."""
    rows = [trial_row(grid[i], exp) for i in range(len(grid))]
    table = pd.DataFrame(rows)
    ascending = exp.tune.mode == "min"
    return table.sort_values("best_objective", ascending=ascending, na_position="last").reset_index(drop=True)


def write_results(table: pd.DataFrame, tune_dir: str) -> None:
    """``results.parquet`` (typed) and ``results.csv`` (for a spreadsheet) into the tune folder or URI."""
    # mixed-type parameter columns (e.g. a categorical of numbers and strings) are stored as text
    safe = table.copy()
    for col in safe.columns:
        if safe[col].map(type).nunique() > 1 and safe[col].notna().any():
            safe[col] = safe[col].map(lambda v: None if v is None or v != v else str(v))
    storage.write_parquet(storage.join(tune_dir, "results.parquet"), safe)
    storage.write_text(storage.join(tune_dir, "results.csv"), table.to_csv(index=False))


def read_results(tune_dir: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(tune_dir, "results.parquet"))))


def search_record(
    exp: ExperimentConfig, arm: str | None, fingerprint: str | None, wall_s: float, table: pd.DataFrame | None
) -> dict:
    """``search.json``: the search's budget (:data:`BUDGET_FIELDS`; settings that do not apply, e.g. ASHA's with
    ``scheduler: none``, are null) and what it spent: trials run, trial-epochs and wall time (the seconds its
    driver sessions spent searching; one killed outright is not counted). ``table`` None: not finished yet.
    ``arm`` None: the experiment's own search (recorded under the arm its space describes)."""
    t = exp.tune
    tpe, asha = t.sampler == "tpe", t.scheduler == "asha"
    return {
        "arm": arm or primary_arm(exp),
        "experiment": exp.name,
        "search_space": exp.search_space,
        "num_samples": t.num_samples,
        "max_epochs": t.max_epochs,
        "max_trial_epochs": t.max_trial_epochs,
        "metric": t.metric,
        "mode": t.mode,
        "sampler": t.sampler,
        "seed": t.seed,
        "tpe_startup_trials": t.tpe_startup_trials if tpe else None,
        "tpe_good_fraction": t.tpe_good_fraction if tpe else None,
        "scheduler": t.scheduler,
        "grace_period": t.grace_period if asha else None,
        "reduction_factor": t.reduction_factor if asha else None,
        "dataset_fingerprint": fingerprint,
        "finished": table is not None,
        "trials_run": None if table is None else len(table),
        "trial_epochs": None if table is None else int(table["epochs"].fillna(0).sum()),
        "wall_s": round(wall_s, 3),
    }


def write_search_record(record: dict, tune_dir: str) -> None:
    storage.write_text(storage.join(tune_dir, SEARCH_RECORD), json.dumps(record, indent=2))


def read_search_record(tune_dir: str) -> dict | None:
    """The search's ``search.json``, or None when it has none (a search run before skintune wrote them)."""
    path = storage.join(tune_dir, SEARCH_RECORD)
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def budget_differences(mtl: dict, baseline: dict) -> list[str]:
    """``"field: baseline's vs MTL's"`` (another arm's vs the experiment's own search's) for every budget field in
    which the two search records differ."""
    return [f"{f}: {baseline.get(f)} vs {mtl.get(f)}" for f in BUDGET_FIELDS if baseline.get(f) != mtl.get(f)]
