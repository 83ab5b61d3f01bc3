"""``skintune retrain``: the best configuration from scratch with K seeds, and the single-task baseline.

Both arms get the same seeds, data, schedule and epochs; the baseline is the same configuration minus the
site task (``--baseline ablation``, the default) or the best trial of a separate single-task search
(``--baseline tuned --baseline-experiment NAME``), so both sides had equal tuning effort. Each run is a Ray
Train run; runs go in parallel when the cluster has room. The best epoch (by the validation objective) is then
evaluated on the held-out test split. Layout under ``<storage>/<experiment>/retrain/``::

    summary.json                         baseline kind, best trial, seeds, configs, commands
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
from tuner.layout import DRIVER_CPU, max_concurrent, min_cluster_cpus, retrain_dir, tune_dir
from tuner.results import read_results

ARMS = ("mtl", "single_task")


def best_trial(exp: ExperimentConfig) -> tuple[str, dict]:
    """The best usable trial of ``exp``'s search: ``(trial_id, sampled parameters)``."""
    path = storage.join(tune_dir(exp), "results.parquet")
    if not storage.exists(path):
        raise UserError(f"{path} not found: run `skintune tune --config ...` for experiment {exp.name!r} first")
    table = read_results(tune_dir(exp))
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


def arm_configs(exp: ExperimentConfig, prepared: str, baseline: str, baseline_exp: ExperimentConfig | None):
    trial_id, params = best_trial(exp)
    mtl = {**exp.train.train_config(), **params, "prepared": prepared, "epochs": exp.tune.max_epochs}
    if baseline == "tuned":
        if baseline_exp is None:
            raise UserError("--baseline tuned needs --baseline-experiment NAME (a search run with single_task.yaml)")
        _, single_params = best_trial(baseline_exp)
        single = {
            **baseline_exp.train.train_config(),
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
    baseline: str = "ablation",
    baseline_exp: ExperimentConfig | None = None,
) -> pd.DataFrame:
    """Retrain both arms over the seeds (skipping finished runs); returns one row per arm x seed."""
    from tuner.data_step import ensure_data
    from tuner.ray_runtime import init_ray, use_gpu

    prepared = ensure_data(exp)
    trial_id, configs = arm_configs(exp, prepared, baseline, baseline_exp)
    seed_list = list(range(seeds or exp.retrain.seeds))
    root = retrain_dir(exp)
    resources = init_ray(min_cpus=min_cluster_cpus(exp))
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
