"""What the search did: trial outcomes, the best trial and its edge-of-range parameters, Optuna's parameter
importances (on an in-memory study rebuilt from ``tune/results.parquet``) and the compute spent.

The results table holds Tune's trial config, in which ``scale_by`` parameters are already multiplied by their
factor; the study gets the base value back (value / factor), as Optuna sampled it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd

from search_spaces import Param, SearchSpace, load_space
from trainables.errors import UserError

STATUSES = ("completed", "stopped_early", "diverged", "error")
USABLE = ("completed", "stopped_early")  # trials with an objective value Optuna may learn from
EDGE = 0.05  # a best value within 5 % of the range (log space for log params) of a bound is "at the edge"
MIN_TRIALS = 3


@dataclass
class Search:
    trials: pd.DataFrame  # in trial-id order (the order Tune created them)
    status_counts: dict[str, int]
    best: dict[str, Any] | None  # the best trial's row
    params: list[dict[str, Any]]  # the best trial's parameters: name, role, value, range, edge
    importances: dict[str, float] | None
    notes: list[str] = field(default_factory=list)


def load_search_space(name: str | None) -> tuple[SearchSpace | None, str | None]:
    if not name:
        return None, "experiment.yaml names no search_space"
    try:
        return load_space(name), None
    except UserError as exc:
        return None, f"search space unavailable ({exc})"


def row_params(row: pd.Series | dict) -> dict[str, Any]:
    """``{name: value}`` from a row's ``param/<name>`` columns, missing (inactive) ones left out."""
    out = {}
    for key, value in dict(row).items():
        if key.startswith("param/") and value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[key[len("param/") :]] = value
    return out


def base_value(p: Param, value: Any, config: dict[str, Any]) -> Any:
    """The value as Optuna sampled it: categoricals matched to their choice (the table may store text),
    ``scale_by`` undone, ints as ints."""
    if p.type == "categorical":
        return next((c for c in p.choices if c == value or str(c) == str(value)), value)
    if p.type == "int":
        return int(round(float(value)))
    return float(value) / p.factor(config) if p.scale_by else float(value)


def distribution(p: Param) -> optuna.distributions.BaseDistribution:
    if p.type == "categorical":
        return optuna.distributions.CategoricalDistribution(list(p.choices))
    if p.type == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def _frozen_trial(row: pd.Series, space: SearchSpace) -> optuna.trial.FrozenTrial:
    config = row_params(row)
    params, dists = {}, {}
    for p in space.params:
        if p.type != "fixed" and p.name in config:
            params[p.name] = base_value(p, config[p.name], config)
            dists[p.name] = distribution(p)
    return optuna.trial.create_trial(params=params, distributions=dists, value=float(row["best_objective"]))


def build_study(trials: pd.DataFrame, space: SearchSpace, mode: str) -> tuple[optuna.Study, int]:
    """An in-memory study of the usable trials; returns it and how many rows could not be added."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)  # no "A new study created" line in the CLI's output
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    optuna.logging.set_verbosity(verbosity)
    usable = trials[trials["status"].isin(USABLE) & trials["best_objective"].notna()]
    skipped = 0
    for _, row in usable.iterrows():
        try:
            study.add_trial(_frozen_trial(row, space))
        except ValueError:  # a value outside the space's range: the space changed after the search
            skipped += 1
    return study, skipped


def importances(trials: pd.DataFrame, space: SearchSpace, mode: str) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of the parameters every usable trial has, or None and why not."""
    study, skipped = build_study(trials, space, mode)
    n = len(study.trials)
    note = (
        f"fANOVA (Optuna) over {n} completed or early-stopped trials, on each trial's best objective (an "
        "early-stopped trial's comes from fewer epochs)"
    )
    if skipped:
        note += f"; {skipped} trial(s) left out: their values lie outside the current search space"
    if n < MIN_TRIALS:
        return None, f"too few usable trials ({n}; at least {MIN_TRIALS}) for parameter importances"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as exc:  # any failure of the evaluator costs the figure, never the report
        return None, f"parameter importances could not be computed: {exc}"
    conditional = [p.name for p in space.params if p.when and p.type != "fixed" and p.name not in found]
    if conditional:
        note += f"; conditional parameters ({', '.join(conditional)}) are left out: not every trial has them"
    return dict(found), note


def best_row(trials: pd.DataFrame, mode: str, best_id: str | None) -> dict[str, Any] | None:
    if best_id is not None and (trials["trial_id"].astype(str) == str(best_id)).any():
        return trials[trials["trial_id"].astype(str) == str(best_id)].iloc[0].to_dict()
    scored = trials[trials["best_objective"].notna() & (trials["status"] != "error")]
    if scored.empty:
        return None
    pick = scored["best_objective"].idxmax() if mode == "max" else scored["best_objective"].idxmin()
    return scored.loc[pick].to_dict()


def edge(p: Param, value: float) -> str:
    """``"low"``/``"high"`` when ``value`` is within EDGE of a bound (log params: log space), else ``""``."""
    if p.type not in ("float", "int") or p.high == p.low:
        return ""
    f = math.log if p.log else float
    pos = (f(value) - f(p.low)) / (f(p.high) - f(p.low))
    return "low" if pos <= EDGE else "high" if pos >= 1 - EDGE else ""


def best_params(best: dict[str, Any], space: SearchSpace | None) -> list[dict[str, Any]]:
    config = row_params(best)
    by_name = {p.name: p for p in space.params} if space else {}
    rows = []
    for name, value in config.items():
        p = by_name.get(name)
        if p is None or p.type == "fixed":
            rows.append({"param": name, "role": p.role if p else "", "value": value, "range": "", "edge": ""})
            continue
        base = base_value(p, value, config)
        span = f"{list(p.choices)}" if p.type == "categorical" else f"[{p.low:g}, {p.high:g}]{' log' if p.log else ''}"
        where = edge(p, base) if p.type != "categorical" else ""
        rows.append({"param": name, "role": p.role, "value": value, "range": span, "edge": where})
    return rows


def analyse(trials: pd.DataFrame, config: dict, best_id: str | None) -> Search:
    mode = (config.get("tune") or {}).get("mode", "max")
    trials = trials.sort_values("trial_id", kind="stable").reset_index(drop=True)
    counts = {s: int((trials["status"] == s).sum()) for s in STATUSES}
    space, problem = load_search_space(config.get("search_space"))
    notes = [problem] if problem else []
    best = best_row(trials, mode, best_id)
    found = None
    if space is not None:
        found, note = importances(trials, space, mode)
        notes.append(note)
    params = best_params(best, space) if best is not None else []
    return Search(trials, counts, best, params, found, notes)


def compute(trials: pd.DataFrame | None, metrics: dict[str, list[dict]], workers: int, gpu: bool) -> list[dict]:
    """Trial-epochs, wall hours and (with GPUs) GPU-hours of the search and of the retraining."""
    rows = []
    if trials is not None:
        rows.append(("search", float(trials["epochs"].fillna(0).sum()), float(trials["wall_s"].fillna(0).sum())))
    runs = [m for arm in metrics.values() for m in arm]
    rows.append(
        (
            "retrain",
            float(sum(m.get("epochs", 0) or 0 for m in runs)),
            float(sum(m.get("wall_s", 0) or 0 for m in runs)),
        )
    )
    out = []
    for stage, epochs, wall in rows:
        gpu_h = wall * workers / 3600 if gpu else None
        out.append({"stage": stage, "trial_epochs": epochs, "wall_hours": wall / 3600, "gpu_hours": gpu_h})
    return out
