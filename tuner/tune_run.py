"""``skintune tune``: Ray Tune + OptunaSearch (TPE/random/QMC) + ASHA over a YAML search space.

Each trial's Tune trainable is :func:`trial_driver`, a small function that builds the same ``TorchTrainer`` as
``skintune train`` (named after the trial id, so a restored trial resumes its own run) and forwards every
epoch's metrics to Tune with ``TuneReportCallback``. Layout under ``<storage>/<experiment>/``::

    experiment.yaml          the resolved experiment config
    tune/                    Tune's experiment dir; tune/<trial>/ holds Tune's and the workers' TensorBoard events
    tune/runs/<trial_id>/    each trial's Ray Train run: checkpoints (best ``keep_checkpoints`` by the objective)
    tune/results.parquet|csv one row per trial (see tuner/results.py)
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from search_spaces import define_by_run, load_space
from trainables import storage
from trainables.config import TRAIN_KEYS
from trainables.errors import UserError
from tuner.config import ExperimentConfig, is_uri, join_storage
from tuner.train_run import make_trainer

DRIVER_CPU = 0.25  # a trial's driver only waits on its workers


def trial_driver(config: dict, exp: dict, prepared: str, use_gpu: bool) -> None:
    """The Tune trainable of one trial: fit one TorchTrainer with the sampled configuration."""
    experiment = ExperimentConfig(**exp)
    ctx = tune.get_context()
    trial_dir = ctx.get_trial_dir()  # local; on cloud storage the workers upload into the trial's folder there
    train_config = {
        **experiment.train.train_config(),
        **config,
        "prepared": prepared,
        "epochs": experiment.tune.max_epochs,
        "tensorboard_dir": join_storage(tune_dir(experiment), Path(trial_dir).name)
        if is_uri(experiment.storage)
        else trial_dir,
    }
    trainer = make_trainer(
        train_config,
        experiment,
        ctx.get_trial_id(),
        runs_dir(experiment),
        use_gpu,
        callbacks=[TuneReportCallback()],
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def tune_dir(exp: ExperimentConfig) -> str:
    return join_storage(exp.experiment_dir, "tune")


def runs_dir(exp: ExperimentConfig) -> str:
    return join_storage(tune_dir(exp), "runs")


def _sampler(exp: ExperimentConfig) -> optuna.samplers.BaseSampler:
    seed = exp.tune.seed
    if exp.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if exp.tune.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def _searcher(exp: ExperimentConfig) -> OptunaSearch:
    space = load_space(exp.search_space, known_keys=TRAIN_KEYS)
    storage = optuna.storages.RDBStorage(exp.tune.study_storage) if exp.tune.study_storage else None
    return OptunaSearch(
        space=define_by_run(space),
        metric=exp.tune.metric,
        mode=exp.tune.mode,
        sampler=_sampler(exp),
        study_name=exp.name,
        storage=storage,
        points_to_evaluate=[space.warm_start()],
    )


def max_concurrent(exp: ExperimentConfig, resources: dict, use_gpu: bool) -> int:
    """How many trials the cluster holds at once: each needs its workers plus a driver fraction."""
    if exp.tune.max_concurrent_trials:
        return exp.tune.max_concurrent_trials
    t = exp.train
    fits = [resources.get("CPU", 1) // (t.workers_per_trial * t.cpus_per_worker + DRIVER_CPU)]
    if use_gpu:
        fits.append(resources.get("GPU", 0) // t.workers_per_trial)
    return max(1, int(min(fits)))


def make_tuner(exp: ExperimentConfig, prepared: str, use_gpu: bool, resources: dict, resume: bool) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, exp=exp.model_dump(), prepared=prepared, use_gpu=use_gpu),
        {"CPU": DRIVER_CPU},
    )
    path = tune_dir(exp)
    if resume:
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    t = exp.tune
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=t.max_epochs,
            grace_period=t.grace_period,
            reduction_factor=t.reduction_factor,
        )
        if t.scheduler == "asha"
        else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=t.metric,
            mode=t.mode,
            search_alg=_searcher(exp),
            scheduler=scheduler,
            num_samples=t.num_samples,
            max_concurrent_trials=max_concurrent(exp, resources, use_gpu),
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=exp.experiment_dir,
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            verbose=1,
        ),
    )


def check_start(exp: ExperimentConfig, resume: bool) -> None:
    """Refuse to overwrite an experiment, or to resume one that does not exist."""
    path = tune_dir(exp)
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise UserError(f"--resume: no experiment to resume at {path}; run without --resume to start it")
    if not resume and (exists or (not is_uri(path) and Path(path).exists())):
        raise UserError(
            f"experiment {exp.name!r} already exists at {exp.experiment_dir}: add --resume to continue it, "
            "or choose another `name:` (nothing was overwritten)"
        )


def write_experiment_yaml(exp: ExperimentConfig) -> None:
    text = yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
    storage.write_text(join_storage(exp.experiment_dir, "experiment.yaml"), text)


def run_tune(exp: ExperimentConfig, resume: bool = False):
    """Prepare data, run (or resume) the search, write the results table; return (ResultGrid, table)."""
    from tuner.data_step import ensure_data
    from tuner.ray_runtime import init_ray, use_gpu
    from tuner.results import results_table, write_results

    check_start(exp, resume)
    load_space(exp.search_space, known_keys=TRAIN_KEYS)  # validate before any work is done
    prepared = ensure_data(exp)
    resources = init_ray(min_cpus=math.ceil(exp.train.workers_per_trial * exp.train.cpus_per_worker + DRIVER_CPU))
    gpu = use_gpu(exp.train.use_gpu)
    write_experiment_yaml(exp)
    grid = make_tuner(exp, prepared, gpu, resources, resume).fit()
    table = results_table(grid, exp)
    write_results(table, tune_dir(exp))
    return grid, table
