"""``skintune retrain``: the best configuration from scratch with K seeds, and the single-task baseline.

Both arms get the same seeds, data, schedule and epochs. The baseline (``--baseline``, by default the
experiment's ``compare.baseline``) is either the ablation, MTL's best configuration with the site head off
(``ablation``), or the best trial of a single-task search (``tuned``): the experiment's own baseline search
(``tune_single_task/``, run by ``tune`` with ``compare: {baseline: tuned}``) or, with ``--baseline-experiment
NAME``, another experiment's search. A tuned baseline's search must have had the MTL search's budget and data
(their ``search.json`` records are compared; a difference is refused). Each run is a Ray Train run; runs go in
parallel when the cluster has room. The best epoch (by the validation objective) is then evaluated on the
held-out test split. Layout under ``<storage>/<experiment>/retrain/``::

    summary.json                         baseline kind, both searches' budgets, best trial, seeds, configs
    <arm>/seed_<k>/run/                  the Ray Train run (checkpoints)
    <arm>/seed_<k>/predictions.parquet   per test image: image_id, lesion, site, lesion_probs, site_probs
    <arm>/seed_<k>/metrics.json          val metrics of the chosen epoch, test/* metrics, checkpoint, wall time

A finished run (its metrics.json exists) is skipped, so an interrupted retrain continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import ray

from trainables import storage
from trainables.errors import UserError
from tuner.config import ExperimentConfig
from tuner.layout import DRIVER_CPU, MTL, SINGLE_TASK, max_concurrent, min_cluster_cpus, retrain_dir, tune_dir
from tuner.results import SEARCH_RECORD, budget_differences, read_results, read_search_record

ARMS = ("mtl", "single_task")
BASELINES = ("ablation", "tuned")


def best_trial(exp: ExperimentConfig, arm: str = MTL) -> tuple[str, dict]:
    """The best usable trial of one of ``exp``'s searches: ``(trial_id, sampled parameters)``."""
    path = storage.join(tune_dir(exp, arm), "results.parquet")
    if not storage.exists(path):
        if arm == SINGLE_TASK:
            raise UserError(
                f"{path} not found: experiment {exp.name!r} has no finished single-task baseline search; set "
                "`compare: {baseline: tuned}` in its YAML and run `skintune tune --config FILE --resume`, or name "
                "another experiment's search with --baseline-experiment NAME"
            )
        raise UserError(f"{path} not found: run `skintune tune --config ...` for experiment {exp.name!r} first")
    table = read_results(tune_dir(exp, arm))
    usable = table[table["status"].isin(["completed", "stopped_early"]) & table["best_objective"].notna()]
    if usable.empty:
        raise UserError(f"{path}: no trial finished without error or divergence; nothing to retrain")
    ascending = exp.tune.mode == "min"
    best = usable.sort_values("best_objective", ascending=ascending).iloc[0]
    params = {k.removeprefix("param/"): _plain(v) for k, v in best.items() if k.startswith("param/") and _set(v)}
    return str(best["trial_id"]), params


def _set(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def baseline_search(exp: ExperimentConfig, baseline_exp: ExperimentConfig | None) -> tuple[ExperimentConfig, str]:
    """Where a tuned baseline comes from: (experiment, arm) of its search, the experiment's own by default."""
    return (exp, SINGLE_TASK) if baseline_exp is None else (baseline_exp, MTL)


def search_budgets(exp: ExperimentConfig, baseline: str, baseline_exp: ExperimentConfig | None) -> dict:
    """Both searches' records (search.json) for summary.json; for a tuned baseline, refuse (one line naming each
    field and both values) a search whose budget or data differs from the MTL search's."""
    budgets = {MTL: read_search_record(tune_dir(exp)), SINGLE_TASK: None}
    if baseline != "tuned":
        return budgets
    source, arm = baseline_search(exp, baseline_exp)
    where = tune_dir(source, arm)
    best_trial(exp)  # both searches finished, each with a usable trial, or a clear error
    best_trial(source, arm)
    budgets[SINGLE_TASK] = read_search_record(where)
    mtl = _recorded(MTL, tune_dir(exp), budgets[MTL])
    differences = budget_differences(mtl, _recorded(SINGLE_TASK, where, budgets[SINGLE_TASK]))
    if differences:
        raise UserError(
            f"baseline search {where} differs from the MTL search {tune_dir(exp)} in {'; '.join(differences)} "
            "(baseline vs MTL): a tuned baseline needs the same budget and data; search it again with the MTL "
            "experiment's tune settings and prepared data, or use --baseline ablation"
        )
    return budgets


def _recorded(label: str, tune_path: str, record: dict | None) -> dict:
    """A search's record (search.json), or a UserError when it has none."""
    if record is None:
        raise UserError(
            f"{storage.join(tune_path, SEARCH_RECORD)} not found: the {label} search ran before skintune recorded "
            "search budgets, so an equal budget cannot be checked; rerun that search, or use --baseline ablation"
        )
    return record


def arm_configs(exp: ExperimentConfig, prepared: str, baseline: str, baseline_exp: ExperimentConfig | None):
    trial_id, params = best_trial(exp)
    mtl = {**exp.train.train_config(), **params, "prepared": prepared, "epochs": exp.tune.max_epochs}
    if baseline == "tuned":
        source, arm = baseline_search(exp, baseline_exp)
        _, single_params = best_trial(source, arm)
        single = {
            **source.train.train_config(),
            **single_params,
            "prepared": prepared,
            "epochs": exp.tune.max_epochs,
            "multitask": False,
        }
    else:
        single = {**mtl, "multitask": False}
    return trial_id, {"mtl": mtl, "single_task": single}


def _fit_and_evaluate(config: dict, exp_dump: dict, run_dir: str, use_gpu: bool, arm: str, seed: int) -> dict:
    """One retrain run (a Ray task on the driver's node): fit, pick the best epoch, evaluate on test."""
    from trainables.evaluate import evaluate_checkpoint
    from tuner.train_run import make_trainer

    exp = ExperimentConfig(**exp_dump)
    started = time.time()
    config = {**config, "tensorboard_dir": storage.join(run_dir, "tensorboard")}
    result = make_trainer(config, exp, "run", run_dir, use_gpu).fit()
    if result.error is not None:
        raise RuntimeError(f"retrain {arm} seed {seed} failed: {result.error}")
    if not result.best_checkpoints:
        raise RuntimeError(f"retrain {arm} seed {seed} saved no checkpoint")
    sign = 1 if exp.tune.mode == "max" else -1
    checkpoint, val = max(result.best_checkpoints, key=lambda cm: sign * cm[1].get(exp.tune.metric, -math.inf))
    with checkpoint.as_directory() as local:  # a local copy when the run is on cloud storage
        test, predictions = evaluate_checkpoint(local, "test")
    storage.write_parquet(storage.join(run_dir, "predictions.parquet"), predictions)
    metrics = {
        "arm": arm,
        "seed": seed,
        "epochs": int(val.get("epoch", 0)),
        # relative to the run folder, so that the experiment folder can be moved or copied down from the cloud
        "checkpoint": Path(checkpoint.path).relative_to(storage.fs_path(run_dir)).as_posix(),
        "val": {k: v for k, v in val.items() if k.startswith("val/")},
        "test": test,
        "diverged": bool(val.get("diverged", 0)),
        "wall_s": time.time() - started,
    }
    # written last, atomically: its presence means "done"
    storage.write_text(storage.join(run_dir, "metrics.json"), json.dumps(metrics, indent=2))
    return metrics


def run_retrain(
    exp: ExperimentConfig,
    seeds: int | None = None,
    baseline: str | None = None,
    baseline_exp: ExperimentConfig | None = None,
) -> pd.DataFrame:
    """Retrain both arms over the seeds (skipping finished runs); returns one row per arm x seed. ``baseline``:
    ablation or tuned, by default the experiment's ``compare.baseline``."""
    from tuner.data_step import ensure_data
    from tuner.ray_runtime import init_ray, use_gpu

    baseline = baseline or exp.compare.baseline
    if baseline not in BASELINES:
        raise UserError(f"baseline {baseline!r}: expected one of {', '.join(BASELINES)}")
    if baseline_exp is not None and baseline != "tuned":
        raise UserError("--baseline-experiment names a tuned baseline's search: add --baseline tuned")
    budgets = search_budgets(exp, baseline, baseline_exp)  # refused before any data is read or run started
    prepared = ensure_data(exp)
    trial_id, configs = arm_configs(exp, prepared, baseline, baseline_exp)
    seed_list = list(range(seeds or exp.retrain.seeds))
    root = retrain_dir(exp)
    resources = init_ray(min_cpus=min_cluster_cpus(exp), log_dir=exp.experiment_dir)
    gpu = use_gpu(exp.train.use_gpu)
    summary = {
        "baseline_kind": baseline,
        "best_trial": trial_id,
        "seeds": seed_list,
        "objective": exp.tune.metric,
        "config": configs["mtl"],
        "baseline_config": configs["single_task"],
        "gpu": gpu,
        "baseline_experiment": baseline_exp.name if baseline_exp else None,
        "baseline_search": tune_dir(*baseline_search(exp, baseline_exp)) if baseline == "tuned" else None,
        "budgets": budgets,
        "workers_per_run": exp.train.workers_per_trial,
    }
    storage.write_text(storage.join(root, "summary.json"), json.dumps(summary, indent=2, default=str))

    task = ray.remote(_fit_and_evaluate).options(num_cpus=DRIVER_CPU)
    todo, rows = [], []
    for seed in seed_list:
        for arm in ARMS:
            run_dir = storage.join(root, arm, f"seed_{seed}")
            done = storage.join(run_dir, "metrics.json")
            if storage.exists(done):
                rows.append(json.loads(storage.read_text(done)))
            else:
                todo.append(({**configs[arm], "seed": seed}, run_dir, arm, seed))
    limit = max_concurrent(exp, resources, gpu)
    pending: list = []
    total = len(todo) + len(rows)
    while todo or pending:
        while todo and len(pending) < limit:
            config, run_dir, arm, seed = todo.pop(0)
            pending.append(task.remote(config, exp.model_dump(), run_dir, gpu, arm, seed))
        ready, pending = ray.wait(pending, num_returns=1)
        row = ray.get(ready[0])
        rows.append(row)
        print(
            f"retrain: {len(rows)}/{total} runs done ({row['arm']} seed {row['seed']}: "
            f"test/lesion_bacc {row['test'].get('test/lesion_bacc', float('nan')):.3f})",
            flush=True,
        )
    return pd.DataFrame([{"arm": r["arm"], "seed": r["seed"], **r["test"]} for r in rows])
