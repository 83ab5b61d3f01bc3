"""``skintune retrain``: each arm of the comparison from scratch with K seeds (:mod:`tuner.arms`).

Every arm (``compare.arms``, by default the experiment's own and single-task) gets the same seeds, data, schedule
and epochs. How each arm's configuration is chosen (``--baseline``, by default the experiment's
``compare.baseline``): ``ablation``, the experiment's best configuration with the site head and the metadata
inputs switched to the arm's (:func:`tuner.arms.switch`; for single-task: MTL's best with the site head off), or
``tuned``, the best trial of the arm's own search (``tune/`` for the experiment's own arm, ``tune_<arm>/`` for the
others, run by ``tune`` with ``compare: {baseline: tuned}``; with ``--baseline-experiment NAME`` the single-task
arm's is another experiment's search). A tuned arm's search must have had the experiment's own search's budget
and data (their ``search.json`` records are compared; a difference is refused). Each run is a Ray Train run; runs
go in parallel when the cluster has room. The best epoch (by the validation objective) is then evaluated on the
held-out test split. Layout under ``<storage>/<experiment>/retrain/``::

    summary.json                         arms, how they were chosen, each search's budget, best trial, seeds,
                                         each arm's config
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
from tuner import arms as arms_mod
from tuner.arms import SINGLE_TASK, comparison_arms, primary_arm, switch
from tuner.config import ExperimentConfig
from tuner.layout import (
    DRIVER_CPU,
    max_concurrent,
    min_cluster_cpus,
    retrain_dir,
    search_title,
    tune_dir,
    tune_name,
)
from tuner.results import SEARCH_RECORD, budget_differences, read_results, read_search_record

BASELINES = ("ablation", "tuned")


def best_trial(exp: ExperimentConfig, arm: str | None = None) -> tuple[str, dict]:
    """The best usable trial of one of ``exp``'s searches (``arm`` None: its own): ``(trial_id, parameters)``."""
    path = storage.join(tune_dir(exp, arm), "results.parquet")
    if not storage.exists(path):
        if arm == SINGLE_TASK and tune_dir(exp, arm) != tune_dir(exp):
            raise UserError(
                f"{path} not found: experiment {exp.name!r} has no finished single-task baseline search; set "
                "`compare: {baseline: tuned}` in its YAML and run `skintune tune --config FILE --resume`, or name "
                "another experiment's search with --baseline-experiment NAME"
            )
        if tune_dir(exp, arm) != tune_dir(exp):
            raise UserError(
                f"{path} not found: experiment {exp.name!r} has no finished search for the {arm} arm; set "
                "`compare: {baseline: tuned}` in its YAML and run `skintune tune --config FILE --resume`, or "
                "retrain with --baseline ablation"
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
    if isinstance(value, list | tuple) or hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
        return True  # a list-valued parameter (metadata_inputs), read back from Parquet as an array
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _plain(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays: Python values (a list for metadata_inputs)
        return value.tolist()
    return value


def arm_search(
    exp: ExperimentConfig, arm: str, baseline_exp: ExperimentConfig | None
) -> tuple[ExperimentConfig, str | None]:
    """Where a tuned arm's search is: (experiment, arm of its search; None: that experiment's own search). The
    single-task arm's is another experiment's own search with ``--baseline-experiment``."""
    if arm == SINGLE_TASK and baseline_exp is not None:
        return baseline_exp, None
    return exp, arm


def baseline_search(
    exp: ExperimentConfig, baseline_exp: ExperimentConfig | None
) -> tuple[ExperimentConfig, str | None]:
    """Where the tuned single-task baseline comes from (see :func:`arm_search`)."""
    return arm_search(exp, SINGLE_TASK, baseline_exp)


def search_budgets(
    exp: ExperimentConfig, baseline: str, baseline_exp: ExperimentConfig | None, arms: tuple[str, ...] | None = None
) -> dict:
    """Each arm's search record (search.json) for summary.json, the experiment's own search's under its arm; with
    ``tuned``, refuse (one line naming each field and both values) an arm's search whose budget or data differ
    from the experiment's own search's. ``ablation``: only the own search's record, the other arms' are None."""
    arms = arms or comparison_arms(exp)
    primary = primary_arm(exp)
    budgets = {primary: read_search_record(tune_dir(exp)), **{a: None for a in arms if a != primary}}
    if baseline != "tuned":
        return budgets
    best_trial(exp)  # every search finished, each with a usable trial, or a clear error
    for arm in arms:
        best_trial(*arm_search(exp, arm, baseline_exp))
    own = _recorded(search_title(exp), tune_dir(exp), budgets[primary])
    for arm in arms:
        source, source_arm = arm_search(exp, arm, baseline_exp)
        where = tune_dir(source, source_arm)
        if where == tune_dir(exp):
            continue
        budgets[arm] = read_search_record(where)
        differences = budget_differences(own, _recorded(search_title(exp, arm), where, budgets[arm]))
        if differences:
            what = "baseline search" if arm == SINGLE_TASK else f"{arm} search"
            raise UserError(
                f"{what} {where} differs from the {search_title(exp)} {tune_dir(exp)} in {'; '.join(differences)} "
                f"({arm} vs {primary}): a tuned arm needs the same budget and data; search it again with the "
                "experiment's tune settings and prepared data, or use --baseline ablation"
            )
    return budgets


def _recorded(label: str, tune_path: str, record: dict | None) -> dict:
    """A search's record (search.json), or a UserError when it has none."""
    if record is None:
        raise UserError(
            f"{storage.join(tune_path, SEARCH_RECORD)} not found: the {label} ran before skintune recorded "
            "search budgets, so an equal budget cannot be checked; rerun that search, or use --baseline ablation"
        )
    return record


def arm_configs(
    exp: ExperimentConfig,
    prepared: str,
    baseline: str,
    baseline_exp: ExperimentConfig | None,
    arms: tuple[str, ...] | None = None,
) -> tuple[str, dict[str, dict]]:
    """(the experiment's best trial, each arm's training config): ``ablation``, the best configuration switched to
    each arm (:func:`tuner.arms.switch`); ``tuned``, each arm's own search's best, switched to the arm's targets and
    inputs (a search of the arm's space already has them; another experiment's search may not)."""
    arms = arms or comparison_arms(exp)
    trial_id, params = best_trial(exp)
    common = {"prepared": prepared, "epochs": exp.tune.max_epochs}
    best = {**exp.train.train_config(), **params, **common}
    configs = {}
    for arm in arms:
        if baseline == "tuned":
            source, source_arm = arm_search(exp, arm, baseline_exp)
            _, found = best_trial(source, source_arm)
            configs[arm] = switch({**source.train.train_config(), **found, **common}, arm)
        else:
            configs[arm] = switch(best, arm)
    return trial_id, configs


def _fit_and_evaluate(config: dict, exp_dump: dict, run_dir: str, use_gpu: bool, arm: str, seed: int) -> dict:
    """One retrain run (a Ray task on the driver's node): fit, pick the best epoch, evaluate on test."""
    from trainables.evaluate import eval_device, evaluate_checkpoint
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
        device = eval_device(use_gpu)  # the run's device: the GPU when it trained on one (and CUDA is here)
        test, predictions = evaluate_checkpoint(local, "test", device=device, tta=exp.retrain.tta)
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
        "test_eval": {"tta": exp.retrain.tta, "device": device.type},  # what the report says of the test evaluation
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
    """Retrain every arm (``compare.arms``) over the seeds (skipping finished runs); returns one row per arm x
    seed. ``baseline``: ablation or tuned, by default the experiment's ``compare.baseline``."""
    from tuner.data_step import ensure_data
    from tuner.ray_runtime import init_ray, use_gpu

    baseline = baseline or exp.compare.baseline
    if baseline not in BASELINES:
        raise UserError(f"baseline {baseline!r}: expected one of {', '.join(BASELINES)}")
    if baseline_exp is not None and baseline != "tuned":
        raise UserError("--baseline-experiment names a tuned baseline's search: add --baseline tuned")
    arms = comparison_arms(exp)
    budgets = search_budgets(exp, baseline, baseline_exp, arms)  # refused before any data is read or run started
    prepared = ensure_data(exp)
    trial_id, configs = arm_configs(exp, prepared, baseline, baseline_exp, arms)
    seed_list = list(range(seeds or exp.retrain.seeds))
    root = retrain_dir(exp)
    resources = init_ray(min_cpus=min_cluster_cpus(exp), log_dir=exp.experiment_dir)
    gpu = use_gpu(exp.train.use_gpu)
    primary = primary_arm(exp)
    main_arm = primary if primary in arms else next(a for a in arms if a != SINGLE_TASK)
    summary = {
        "arms": list(arms),
        "primary_arm": primary,
        "baseline_kind": baseline,
        "best_trial": trial_id,
        "seeds": seed_list,
        "objective": exp.tune.metric,
        "config": configs[main_arm],  # the experiment's own arm (or the first compared arm)
        "baseline_config": configs[SINGLE_TASK],
        "configs": configs,
        "needs": {arm: arms_mod.needs(configs[arm]) for arm in arms},  # at inference: image only / + metadata
        "searches": _searches(exp, arms, baseline, baseline_exp),
        "gpu": gpu,
        "baseline_experiment": baseline_exp.name if baseline_exp else None,
        "baseline_search": tune_dir(*baseline_search(exp, baseline_exp)) if baseline == "tuned" else None,
        "search_titles": {arm: search_title(exp, arm) for arm in arms if baseline == "tuned" or arm == primary},
        "budgets": budgets,
        "workers_per_run": exp.train.workers_per_trial,
    }
    storage.write_text(storage.join(root, "summary.json"), json.dumps(summary, indent=2, default=str))

    task = ray.remote(_fit_and_evaluate).options(num_cpus=DRIVER_CPU)
    todo, rows = [], []
    for seed in seed_list:
        for arm in arms:
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


def _searches(
    exp: ExperimentConfig, arms: tuple[str, ...], baseline: str, baseline_exp: ExperimentConfig | None
) -> dict[str, str]:
    """Each arm's search (for the report): the experiment's own search, and with ``tuned`` each arm's; a folder of
    this experiment by its name (``tune``, ``tune_<arm>``), another experiment's search by its path or URI."""
    found = {primary_arm(exp): tune_name(exp)}
    if baseline == "tuned":
        for arm in arms:
            source, source_arm = arm_search(exp, arm, baseline_exp)
            found[arm] = tune_name(exp, arm) if source is exp else tune_dir(source, source_arm)
    return found
