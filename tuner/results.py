"""The search's results table: one row per trial, written as ``tune/results.parquet`` and ``tune/results.csv``.

Columns: ``trial_id``, ``status`` (completed | stopped_early | diverged | error), ``epochs``, ``best_objective``,
``last_objective``, ``best_epoch``, ``checkpoint_path`` (the best epoch's Train checkpoint), ``wall_s``,
``error``, and one ``param/<name>`` column per sampled parameter.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from trainables import storage
from tuner.config import ExperimentConfig


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
