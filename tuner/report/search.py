"""What the search did: trial outcomes, the best trial and its edge-of-range parameters, Optuna's parameter
importances (on an in-memory study rebuilt from ``tune/results.parquet``) and the compute spent; and, with a
tuned baseline, its own search beside the MTL search (:func:`searches`: budgets, trials, what each spent).

The results table holds Tune's trial config, in which ``scale_by`` parameters are already multiplied by their
factor; the study gets the base value back (value / factor), as Optuna sampled it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from search_spaces import Param, SearchSpace, load_space
from trainables.errors import UserError
from tuner.layout import MTL, SEARCH_TITLES, SINGLE_TASK, tune_name
from tuner.results import SEARCH_RECORD, budget_differences

BASELINE_LABELS = {
    "ablation": "ablation (MTL's best configuration with the site head off)",
    "tuned": "tuned (the best trial of its own single-task search, with the MTL search's budget)",
}

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
    low, high = p.bounds()
    if p.type == "int":
        return optuna.distributions.IntDistribution(int(low), int(high), log=p.log, step=int(p.step or 1))
    return optuna.distributions.FloatDistribution(low, high, log=p.log, step=p.step)


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
    low, high = p.bounds()
    f = math.log if p.log else float
    pos = (f(value) - f(low)) / (f(high) - f(low))
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


def compute(
    trials: pd.DataFrame | None,
    metrics: dict[str, list[dict]],
    workers: int,
    gpu: bool,
    baseline_trials: pd.DataFrame | None = None,
) -> list[dict]:
    """Trial-epochs, wall hours and (with GPUs) GPU-hours of the search, the tuned baseline's search (when given)
    and the retraining."""
    rows = []
    for stage, table in (("search", trials), ("single-task baseline search", baseline_trials)):
        if table is not None:
            rows.append((stage, float(table["epochs"].fillna(0).sum()), float(table["wall_s"].fillna(0).sum())))
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


@dataclass
class ArmSearch:
    """One of the experiment's searches as the report shows it: its trials (None where not readable here) and
    its record (search.json; None for a search run before skintune wrote them)."""

    arm: str
    title: str
    trials: pd.DataFrame | None
    record: dict | None


def _read_search(folder: Path) -> tuple[pd.DataFrame | None, dict | None]:
    table, record = folder / "results.parquet", folder / SEARCH_RECORD
    trials = pd.read_parquet(table).sort_values("trial_id", kind="stable") if table.is_file() else None
    try:
        found = json.loads(record.read_text()) if record.is_file() else None
    except json.JSONDecodeError:
        found = None
    return (None if trials is None else trials.reset_index(drop=True)), found


def searches(experiment_dir: Path, summary: dict) -> dict[str, ArmSearch]:
    """The MTL search and, when there is one, the tuned baseline's: this experiment's ``tune_single_task/``, or
    the other experiment's search retrain used (``summary.json``: ``baseline_search``, ``budgets``)."""
    budgets = summary.get("budgets") or {}
    found = {}
    for arm in (MTL, SINGLE_TASK):
        trials, record = _read_search(experiment_dir / tune_name(arm))
        if arm == SINGLE_TASK and trials is None and summary.get("baseline_search"):
            other = Path(str(summary["baseline_search"]))  # another experiment's search (readable when local)
            trials, record = _read_search(other) if other.is_dir() else (None, None)
        record = record or budgets.get(arm)
        if trials is not None or record is not None:
            found[arm] = ArmSearch(arm, SEARCH_TITLES[arm], trials, record)
    return found


def _spent(s: ArmSearch) -> tuple[float, float]:
    """(trials run, trial-epochs): the record's, else counted in the table."""
    r = s.record or {}
    counted = (math.nan, math.nan) if s.trials is None else (len(s.trials), s.trials["epochs"].fillna(0).sum())
    trials = r.get("trials_run")
    epochs = r.get("trial_epochs")
    return float(counted[0] if trials is None else trials), float(counted[1] if epochs is None else epochs)


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "n/a"
    return f"{seconds / 60:.1f} min" if seconds < 3 * 3600 else f"{seconds / 3600:.2f} h"


def budget_rows(found: dict[str, ArmSearch]) -> list[list[str]]:
    """Rows of the side-by-side budget table (one column per search): what each was given, then what it spent."""
    arms = list(found.values())

    def given(key: str, fmt=str) -> list[str]:
        values = [(s.record or {}).get(key) for s in arms]
        return ["n/a" if s.record is None else "-" if v is None else fmt(v) for s, v in zip(arms, values, strict=True)]

    def sampler(r: dict) -> str:
        return f"{str(r.get('sampler')).upper()}, seed {r.get('seed')}"

    def scheduler(r: dict) -> str:
        if r.get("scheduler") != "asha":
            return str(r.get("scheduler"))
        return f"ASHA (grace {r.get('grace_period')}, factor {r.get('reduction_factor'):g})"

    spent = [_spent(s) for s in arms]
    trial_hours = [
        "n/a" if s.trials is None else f"{float(s.trials['wall_s'].fillna(0).sum()) / 3600:.2f}" for s in arms
    ]

    def space(s: ArmSearch) -> str:
        name = (s.record or {}).get("search_space")
        if name is None:
            return "n/a"
        return f"`{name}`" if s.arm == MTL else f"`{name}` minus its scientific parameters, multitask: false"

    return [
        ["search space", *(space(s) for s in arms)],
        ["trials (num_samples)", *given("num_samples")],
        ["max epochs a trial", *given("max_epochs")],
        ["trial-epoch budget (max_trial_epochs)", *given("max_trial_epochs")],
        ["sampler", *(("n/a" if s.record is None else sampler(s.record)) for s in arms)],
        ["scheduler", *(("n/a" if s.record is None else scheduler(s.record)) for s in arms)],
        ["objective", *given("metric")],
        ["data (fingerprint)", *given("dataset_fingerprint", lambda v: f"`{str(v)[:16]}`")],
        ["trials run", *("n/a" if t != t else f"{t:.0f}" for t, _ in spent)],
        ["trial-epochs run", *("n/a" if e != e else f"{e:.0f}" for _, e in spent)],
        ["wall time of the search", *(_duration((s.record or {}).get("wall_s")) for s in arms)],
        ["trial wall-hours (sum over trials)", *trial_hours],
    ]


def budget_notes(found: dict[str, ArmSearch]) -> list[str]:
    """What keeps the two searches from being an equal-budget pair, if anything."""
    mtl, single = found.get(MTL), found.get(SINGLE_TASK)
    if mtl is None or single is None:
        return []
    if mtl.record is None or single.record is None:
        return ["A search has no search.json (it ran before skintune recorded budgets): equal budgets not checked."]
    differences = budget_differences(mtl.record, single.record)
    if differences:
        return [f"The searches' budgets differ (baseline vs MTL): {'; '.join(differences)}."]
    return [
        "Both searches had the same budget, sampler and seed, scheduler and prepared data (search.json); the "
        "baseline's search space is the MTL space minus its scientific parameters, with the site head off."
    ]
