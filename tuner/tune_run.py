"""``skintune tune``: Ray Tune + OptunaSearch (TPE/random/QMC) + ASHA over a YAML search space.

Each trial's Tune trainable is :func:`trial_driver`, a small function that builds the same ``TorchTrainer`` as
``skintune train`` (named after the trial id, so a restored trial resumes its own run) and forwards every
epoch's metrics to Tune with :class:`~tuner.tune_callbacks.EpochReportCallback` (Tune's ``training_iteration`` is
the epoch, also after a resume). The searcher is in :mod:`tuner.searcher`, Tune's callbacks and loggers in
:mod:`tuner.tune_callbacks`, where the outputs go (and how many trials run at once) in :mod:`tuner.layout`.

With ``compare: {baseline: tuned}`` the experiment has one search per arm (:mod:`tuner.arms`), run one after the
other as Tune experiments in the same storage: the experiment's own (``tune/``, the arm its space describes),
then each other arm's (``tune_<arm>/``, e.g. ``tune_single_task/``: the same space turned into the arm's) with the
same budget, sampler, seed, scheduler, concurrency and prepared data. Each writes its results table and its
record (``search.json``) when it ends; ``--resume`` continues the first unfinished one (a search with a results
table is finished and kept).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import pandas as pd
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from trainables import storage
from trainables.errors import UserError
from tuner.arms import arm_space, is_primary, search_arms
from tuner.config import ExperimentConfig, TuneSection
from tuner.layout import DRIVER_CPU, min_cluster_cpus, runs_dir, search_concurrency, search_title, tune_dir, tune_name
from tuner.ray_runtime import tune_verbosity
from tuner.results import (
    read_results,
    read_search_record,
    search_record,
    trials_table,
    write_results,
    write_search_record,
)
from tuner.searcher import EpochBudget, make_searcher
from tuner.train_run import make_trainer
from tuner.tune_callbacks import EpochReportCallback, TrialLines, epoch_loggers


def trial_driver(config: dict, exp: dict, prepared: str, use_gpu: bool, arm: str | None = None) -> None:
    """The Tune trainable of one trial (of the ``arm``'s search; None: the experiment's own): fit one TorchTrainer
    with the sampled configuration."""
    experiment = ExperimentConfig(**exp)
    ctx = tune.get_context()
    trial_dir = ctx.get_trial_dir()  # local; on cloud storage the workers upload into the trial's folder there
    train_config = {
        **experiment.train.train_config(),
        **config,
        "prepared": prepared,
        "epochs": experiment.tune.max_epochs,
        "tensorboard_dir": storage.join(tune_dir(experiment, arm), Path(trial_dir).name)
        if storage.is_uri(experiment.storage)
        else trial_dir,
    }
    trainer = make_trainer(
        train_config,
        experiment,
        ctx.get_trial_id(),
        runs_dir(experiment, arm),
        use_gpu,
        callbacks=[EpochReportCallback()],
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs survive ``tune --resume``.

    Ray Tune (2.60) leaves the scheduler out of the experiment state it saves (``TuneController.__getstate__``): a
    restored Tuner runs with the scheduler pickled into ``tuner.pkl`` when the experiment started, its rungs
    empty, so the trials that reported before the kill no longer count and ASHA stops fewer trials afterwards.
    Here each restored trial that had reported is replayed into its bracket from its ``progress.csv`` in the
    storage (what Tune logged, saved with the state it is restored from; ``training_iteration`` is the epoch).
    A rung keeps a trial's first value, so replaying a trial seen before (Tune re-adds a trial it retries)
    changes nothing. Module-level: Tune pickles it into ``tuner.pkl``."""

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        metric, sign = self._metric, self._metric_op  # set by TuneConfig(metric, mode) before any trial is added
        if trial.has_reported_at_least_once and metric is not None and sign is not None:
            bracket = self._trial_info[trial.trial_id]
            for step, value in _logged(trial, self._time_attr, metric):
                bracket.on_result(trial, step, sign * value)


def _logged(trial, time_attr: str, metric: str) -> list[tuple[float, float]]:
    """(time, metric) of each result in the trial's progress.csv in the storage, in order ([] if none there; a row
    cut short by a kill is left out)."""
    try:
        with trial.storage.storage_filesystem.open_input_stream(f"{trial.path}/progress.csv") as f:
            text = f.read().decode()
    except OSError:
        return []
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            step, value = float(row[time_attr]), float(row[metric])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(step) and math.isfinite(value):
            out.append((step, value))
    return out


def make_scheduler(t: TuneSection):
    """The search's trial scheduler: ASHA over epochs (one that survives a resume), or FIFO (none)."""
    if t.scheduler != "asha":
        return FIFOScheduler()
    return ResumableASHA(
        time_attr="training_iteration",
        max_t=t.max_epochs,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
    )


def make_tuner(
    exp: ExperimentConfig, prepared: str, use_gpu: bool, resources: dict, resume: bool, arm: str | None = None
) -> tune.Tuner:
    """The Tuner of the ``arm``'s search (a new one, or with ``resume`` the one restored from its folder)."""
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, exp=exp.model_dump(), prepared=prepared, use_gpu=use_gpu, arm=arm),
        {"CPU": DRIVER_CPU},
    )
    path = tune_dir(exp, arm)
    if resume:
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    t = exp.tune
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=t.metric,
            mode=t.mode,
            search_alg=make_searcher(exp, arm),
            scheduler=make_scheduler(t),
            num_samples=t.num_samples,
            max_concurrent_trials=search_concurrency(exp, resources, use_gpu),
        ),
        run_config=tune.RunConfig(
            name=tune_name(exp, arm),
            storage_path=exp.experiment_dir,
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            callbacks=[
                *epoch_loggers(),
                TrialLines(t.metric, t.mode, t.max_epochs, t.num_samples, tune_name(exp, arm)),
            ],
            stop=EpochBudget(t.max_trial_epochs) if t.max_trial_epochs else None,
            verbose=tune_verbosity(),  # Tune's tables only with --verbose; TrialLines prints a line per trial
        ),
    )


def check_start(exp: ExperimentConfig, resume: bool) -> None:
    """Refuse to overwrite an experiment (any of its searches), or to resume one that does not exist."""
    path = tune_dir(exp)
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise UserError(f"--resume: no experiment to resume at {path}; run without --resume to start it")
    others = [tune_dir(exp, arm) for arm in search_arms(exp) if not is_primary(exp, arm)]
    if not resume and any(_started(p) for p in [path, *others]):
        raise UserError(
            f"experiment {exp.name!r} already exists at {exp.experiment_dir}: add --resume to continue it, "
            "or choose another `name:` (nothing was overwritten)"
        )


def _started(path: str) -> bool:
    return tune.Tuner.can_restore(path) or (not storage.is_uri(path) and Path(path).exists())


def write_experiment_yaml(exp: ExperimentConfig) -> None:
    text = yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
    storage.write_text(storage.join(exp.experiment_dir, "experiment.yaml"), text)


def dataset_fingerprint(prepared: str) -> str | None:
    """The prepared data's ``fingerprint`` (dataset.json): which data a search ran on."""
    path = storage.join(prepared, "dataset.json")
    return json.loads(storage.read_text(path)).get("fingerprint") if storage.exists(path) else None


def _announce(exp: ExperimentConfig, arm: str, restore: bool, concurrency: int) -> None:
    t = exp.tune
    budget = f", stopped at {t.max_trial_epochs} trial-epochs" if t.max_trial_epochs else ""
    scheduler = f"ASHA (grace {t.grace_period}, factor {t.reduction_factor:g})" if t.scheduler == "asha" else "FIFO"
    print(
        f"tune: {search_title(exp, arm)}{' (resumed)' if restore else ''}, {t.num_samples} "
        f"trial{'s' if t.num_samples != 1 else ''} of up to "
        f"{t.max_epochs} epochs{budget}, {t.sampler.upper()} seed {t.seed} + {scheduler}, {concurrency} at once "
        f"({tune_dir(exp, arm)})",
        flush=True,
    )


def run_search(
    exp: ExperimentConfig, arm: str, prepared: str, gpu: bool, resources: dict, resume: bool
) -> tuple[tune.ResultGrid | None, pd.DataFrame]:
    """Run, resume or keep (when finished earlier) one of the experiment's searches; write its record
    (search.json) and, once every trial has ended, its results table, which marks the search finished. Returns
    its ResultGrid (None when kept) and table. An interrupted search (Ctrl-C: Tune saves its state and returns)
    raises KeyboardInterrupt, so that nothing runs after it and ``--resume`` continues it."""
    path = tune_dir(exp, arm)
    if storage.exists(storage.join(path, "results.parquet")):
        print(f"tune: {search_title(exp, arm)} finished earlier; kept ({path}/results.parquet)", flush=True)
        return None, read_results(path)
    restore = resume and tune.Tuner.can_restore(path)
    _announce(exp, arm, restore, search_concurrency(exp, resources, gpu))
    fingerprint = dataset_fingerprint(prepared)
    spent = (read_search_record(path) or {}).get("wall_s", 0.0) if restore else 0.0
    started = time.monotonic()

    def record(table: pd.DataFrame | None) -> None:
        wall = spent + time.monotonic() - started  # this session's time added to the earlier sessions'
        write_search_record(search_record(exp, arm, fingerprint, wall, table), path)

    try:
        grid = make_tuner(exp, prepared, gpu, resources, restore, arm).fit()
    except BaseException:
        record(None)
        raise
    if grid.num_terminated + grid.num_errors < len(grid):
        record(None)
        print(f"tune: {search_title(exp, arm)} interrupted; continue it with `skintune tune ... --resume`", flush=True)
        raise KeyboardInterrupt
    table = trials_table(grid, exp)
    record(table)
    write_results(table, path)
    return grid, table


def run_tune(exp: ExperimentConfig, resume: bool = False):
    """Prepare data, run (or resume) the experiment's searches (:func:`search_arms`), write each one's results
    table and record; return the experiment's own search's (ResultGrid, table); the grid is None if it had
    finished earlier."""
    from tuner.data_step import ensure_data
    from tuner.ray_runtime import init_ray, use_gpu

    check_start(exp, resume)
    for arm in search_arms(exp):
        arm_space(exp, arm)  # validate before any work is done
    prepared = ensure_data(exp)
    resources = init_ray(min_cpus=min_cluster_cpus(exp), log_dir=exp.experiment_dir)
    gpu = use_gpu(exp.train.use_gpu)
    write_experiment_yaml(exp)
    found = {arm: run_search(exp, arm, prepared, gpu, resources, resume) for arm in search_arms(exp)}
    return found[search_arms(exp)[0]]
