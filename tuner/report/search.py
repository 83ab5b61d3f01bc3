"""What the search did: trial outcomes, the best trial and its edge-of-range parameters, Optuna's parameter
importances (on an in-memory study rebuilt from ``tune/results.parquet``) and the compute spent; and, with tuned
arms, each arm's own search beside the experiment's (:func:`searches`: budgets, trials, what each spent).

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
from tuner.arms import MTL, SINGLE_TASK
from tuner.results import SEARCH_RECORD, budget_differences

BASELINE_LABELS = {
    "ablation": "ablation (MTL's best configuration with the site head off)",
    "tuned": "tuned (the best trial of its own single-task search, with the MTL search's budget)",
}
# the searches of a summary.json written before named arms: (folder, title)
OLD_SEARCHES = {MTL: ("tune", "MTL search"), SINGLE_TASK: ("tune_single_task", "single-task baseline search")}
SEARCH_TITLES = {arm: title for arm, (_, title) in OLD_SEARCHES.items()}

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
    baseline_trials: pd.DataFrame | dict[str, pd.DataFrame | None] | None = None,
) -> list[dict]:
    """Trial-epochs, wall hours and (with GPUs) GPU-hours of the search, the other tuned arms' searches (when given:
    the single-task baseline's trials, or {title: trials}) and the retraining."""
    rows = []
    others = baseline_trials if isinstance(baseline_trials, dict) else {"single-task baseline search": baseline_trials}
    for stage, table in (("search", trials), *others.items()):
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
    own: bool = False  # the experiment's own search (tune/), not derived for another arm


def _read_search(folder: Path) -> tuple[pd.DataFrame | None, dict | None]:
    table, record = folder / "results.parquet", folder / SEARCH_RECORD
    trials = pd.read_parquet(table).sort_values("trial_id", kind="stable") if table.is_file() else None
    try:
        found = json.loads(record.read_text()) if record.is_file() else None
    except json.JSONDecodeError:
        found = None
    return (None if trials is None else trials.reset_index(drop=True)), found


def searches(experiment_dir: Path, summary: dict) -> dict[str, ArmSearch]:
    """The experiment's own search and, with tuned arms, each arm's (this experiment's ``tune_<arm>/``, or for the
    single-task arm another experiment's search that retrain used), as ``summary.json`` lists them (``searches``,
    ``search_titles``, ``budgets``; before named arms: ``tune/`` and ``tune_single_task/``). A search folder is
    read under this experiment folder by its name (the experiment may have been moved or copied down), else at
    the recorded path (another experiment's, readable when local). The experiment's own search comes first."""
    budgets = summary.get("budgets") or {}
    titles = summary.get("search_titles") or {}
    listed = summary.get("searches")
    places: dict[str, tuple[str | None, str | None]]  # arm -> (folder in this experiment, another's path)
    if listed:  # a folder of this experiment by name; another experiment's search by its path or URI
        places = {arm: (None, w) if "/" in w else (w, None) for arm, w in ((a, str(w)) for a, w in listed.items())}
    else:
        places = {arm: (folder, None) for arm, (folder, _) in OLD_SEARCHES.items()}
        if summary.get("baseline_search"):
            places[SINGLE_TASK] = (places[SINGLE_TASK][0], str(summary["baseline_search"]))
    own = [a for a, (folder, _) in places.items() if folder == "tune"]
    found = {}
    for arm in [*own, *(a for a in places if a not in own)]:
        folder, recorded = places[arm]
        trials, record = _read_search(experiment_dir / folder) if folder else (None, None)
        other = Path(recorded) if recorded else None
        if trials is None and other is not None and other.is_dir():
            trials, record = _read_search(other)  # another experiment's search (readable when local)
        record = record or budgets.get(arm)
        if trials is not None or record is not None:
            title = titles.get(arm) or SEARCH_TITLES.get(arm) or f"{arm} search"
            found[arm] = ArmSearch(arm, title, trials, record, own=folder == "tune")
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
        if s.own or (s.arm == MTL and not any(x.own for x in arms)):
            return f"`{name}`"
        if s.arm == SINGLE_TASK:
            return f"`{name}` minus its scientific parameters, multitask: false"
        return f"`{name}` turned into the {s.arm} arm's (tuner/arms.py)"

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
    """What keeps the searches from having equal budgets, if anything (each compared with the experiment's own)."""
    searches = list(found.values())
    own = next((s for s in searches if s.own), found.get(MTL) or (searches[0] if searches else None))
    others = [s for s in searches if s is not own]
    if own is None or not others:
        return []
    if own.record is None or any(s.record is None for s in others):
        return ["A search has no search.json (it ran before skintune recorded budgets): equal budgets not checked."]
    notes = []
    for s in others:
        assert s.record is not None and own.record is not None
        differences = budget_differences(own.record, s.record)
        if differences:
            who = "baseline" if s.arm == SINGLE_TASK and len(others) == 1 else s.arm
            notes.append(f"The searches' budgets differ ({who} vs {own.arm}): {'; '.join(differences)}.")
    if notes:
        return notes
    if len(others) == 1 and others[0].arm == SINGLE_TASK:
        return [
            "Both searches had the same budget, sampler and seed, scheduler and prepared data (search.json); the "
            "baseline's search space is the MTL space minus its scientific parameters, with the site head off."
        ]
    return [
        f"All {len(searches)} searches had the same budget, sampler and seed, scheduler and prepared data "
        "(search.json); each arm's search space is the experiment's turned into the arm's: the site task's "
        "scientific parameters only where the site is a target, the metadata branch's parameters only where "
        "metadata are inputs."
    ]
