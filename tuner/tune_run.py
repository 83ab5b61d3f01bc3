"""``skintune tune``: Ray Tune + OptunaSearch (TPE/random/QMC) + ASHA over a YAML search space.

Each trial's Tune trainable is :func:`trial_driver`, a small function that builds the same ``TorchTrainer`` as
``skintune train`` (named after the trial id, so a restored trial resumes its own run) and forwards every
epoch's metrics to Tune with :class:`~tuner.tune_callbacks.EpochReportCallback` (Tune's ``training_iteration`` is
the epoch, also after a resume). The searcher is in :mod:`tuner.searcher`, Tune's callbacks and loggers in
:mod:`tuner.tune_callbacks`, where the outputs go (and how many trials run at once) in :mod:`tuner.layout`.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from search_spaces import load_space
from trainables import storage
from trainables.config import TRAIN_KEYS
from trainables.errors import UserError
from tuner.config import ExperimentConfig
from tuner.layout import DRIVER_CPU, max_concurrent, min_cluster_cpus, runs_dir, tune_dir
from tuner.searcher import EpochBudget, make_searcher
from tuner.train_run import make_trainer
from tuner.tune_callbacks import EpochReportCallback, epoch_loggers


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
        "tensorboard_dir": storage.join(tune_dir(experiment), Path(trial_dir).name)
        if storage.is_uri(experiment.storage)
        else trial_dir,
    }
    trainer = make_trainer(
        train_config,
        experiment,
        ctx.get_trial_id(),
        runs_dir(experiment),
        use_gpu,
        callbacks=[EpochReportCallback()],
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


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
            search_alg=make_searcher(exp),
            scheduler=scheduler,
            num_samples=t.num_samples,
            max_concurrent_trials=max_concurrent(exp, resources, use_gpu),
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=exp.experiment_dir,
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            callbacks=epoch_loggers(),
            stop=EpochBudget(t.max_trial_epochs) if t.max_trial_epochs else None,
            verbose=1,
        ),
    )


def check_start(exp: ExperimentConfig, resume: bool) -> None:
    """Refuse to overwrite an experiment, or to resume one that does not exist."""
    path = tune_dir(exp)
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise UserError(f"--resume: no experiment to resume at {path}; run without --resume to start it")
    if not resume and (exists or (not storage.is_uri(path) and Path(path).exists())):
        raise UserError(
            f"experiment {exp.name!r} already exists at {exp.experiment_dir}: add --resume to continue it, "
            "or choose another `name:` (nothing was overwritten)"
        )


def write_experiment_yaml(exp: ExperimentConfig) -> None:
    text = yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
    storage.write_text(storage.join(exp.experiment_dir, "experiment.yaml"), text)


def run_tune(exp: ExperimentConfig, resume: bool = False):
    """Prepare data, run (or resume) the search, write the results table; return (ResultGrid, table)."""
    from tuner.data_step import ensure_data
    from tuner.ray_runtime import init_ray, use_gpu
    from tuner.results import trials_table, write_results

    check_start(exp, resume)
    load_space(exp.search_space, known_keys=TRAIN_KEYS)  # validate before any work is done
    prepared = ensure_data(exp)
    resources = init_ray(min_cpus=min_cluster_cpus(exp))
    gpu = use_gpu(exp.train.use_gpu)
    write_experiment_yaml(exp)
    grid = make_tuner(exp, prepared, gpu, resources, resume).fit()
    table = trials_table(grid, exp)
    write_results(table, tune_dir(exp))
    return grid, table
