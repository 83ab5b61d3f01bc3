"""``skintune tune``: Ray Tune + OptunaSearch (TPE/random/QMC) + ASHA over a YAML search space.

Each trial's Tune trainable is :func:`trial_driver`, a small function that builds the same ``TorchTrainer`` as
``skintune train`` (named after the trial id, so a restored trial resumes its own run) and forwards every
epoch's metrics to Tune with :class:`EpochReportCallback` (Tune's ``training_iteration`` is the epoch, also after a
resume). Layout under ``<storage>/<experiment>/``::

    experiment.yaml          the resolved experiment config
    tune/                    Tune's experiment dir; tune/<trial>/ holds Tune's and the workers' TensorBoard events
    tune/runs/<trial_id>/    each trial's Ray Train run: checkpoints (best ``keep_checkpoints`` by the objective)
    tune/results.parquet|csv one row per trial (see tuner/results.py)
"""

from __future__ import annotations

import csv
import math
import warnings
from functools import partial
from pathlib import Path

import optuna
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from search_spaces import define_by_run, load_space
from trainables import storage
from trainables.config import TRAIN_KEYS
from trainables.errors import UserError
from tuner.config import OPTUNA_GOOD_FRACTION, ExperimentConfig
from tuner.train_run import make_trainer

DRIVER_CPU = 0.25  # a trial's driver only waits on its workers


class EpochReportCallback(TuneReportCallback):
    """``TuneReportCallback`` with Tune's ``training_iteration`` set to the worker's epoch.

    Tune counts iterations itself and starts again at 1 when a trial is restored without a Tune checkpoint (a
    resumed experiment: the trial's Train run continues from its own checkpoint), which made a resumed trial's
    ``ray/tune/*`` TensorBoard steps repeat and ASHA see it at the wrong rung. Tune keeps a reported value."""

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and "epoch" in metrics[0]:
            metrics = [{**metrics[0], "training_iteration": int(metrics[0]["epoch"])}, *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)


class EpochBudget(Stopper):
    """Ends the search once its trials have run ``budget`` epochs in all (``tune.max_trial_epochs``): a search
    budget in the unit early stopping saves, so that searches with and without it can be given the same. Trials
    still running then stop there (each keeps its checkpoints); trials not started do not start."""

    def __init__(self, budget: int):
        self.budget = budget
        self.epochs: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        # the highest epoch, not a count of results: a restored trial reports its last epoch once more
        self.epochs[trial_id] = max(self.epochs.get(trial_id, 0), int(result.get(TRAINING_ITERATION, 0)))
        return False

    def stop_all(self) -> bool:
        return sum(self.epochs.values()) >= self.budget


class LoggedEpochs:
    """The last epoch each trial's Tune logs hold, so that a result is logged once per epoch.

    A restarted Train run reports the epoch it resumes from once more (trainables/train_loop.py: Tune may not
    have logged it before a kill). And Tune saves its experiment state only every ~10 s, so a driver killed after
    a trial's last rows were logged can leave that trial RUNNING in the saved state: on resume it runs again and
    its finished Train run reports its last epoch again. Such a repeat is left out of progress.csv, result.json
    and Tune's TensorBoard events. After a driver restart the last logged epoch is read from the trial's
    progress.csv (where the driver has it: a local experiment)."""

    def __init__(self):
        self._last: dict[str, int] = {}
        self._current: dict[str, tuple[dict, bool]] = {}  # per trial: the result being logged, and the verdict

    def repeat(self, trial, result: dict) -> bool:
        seen = self._current.get(trial.trial_id)
        if seen is not None and seen[0] is result:  # the same result, asked by the next logger
            return seen[1]
        epoch = result.get("epoch")
        if trial.trial_id not in self._last:
            self._last[trial.trial_id] = _last_logged_epoch(Path(trial.local_path, "progress.csv"))
        verdict = epoch is not None and epoch <= self._last[trial.trial_id]
        if epoch is not None and not verdict:
            self._last[trial.trial_id] = epoch
        self._current[trial.trial_id] = (result, verdict)
        return verdict


def _last_logged_epoch(path: Path) -> float:
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except OSError:
        return -math.inf
    epochs = [float(r["epoch"]) for r in rows if r.get("epoch") not in (None, "")]
    return max(epochs, default=-math.inf)


class _OncePerEpoch:
    def __init__(self, logged: LoggedEpochs):
        super().__init__()
        self._logged = logged

    def log_trial_result(self, iteration: int, trial, result: dict):
        if not self._logged.repeat(trial, result):
            super().log_trial_result(iteration, trial, result)


class OnceCSVLogger(_OncePerEpoch, CSVLoggerCallback):
    pass


class OnceJsonLogger(_OncePerEpoch, JsonLoggerCallback):
    pass


class OnceTBXLogger(_OncePerEpoch, TBXLoggerCallback):
    pass


def epoch_loggers() -> list:
    """Tune's three loggers (CSV, JSON, TensorBoard), each logging a trial's epoch once (see LoggedEpochs)."""
    logged = LoggedEpochs()
    return [OnceCSVLogger(logged), OnceJsonLogger(logged), OnceTBXLogger(logged)]


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


def tune_dir(exp: ExperimentConfig) -> str:
    return storage.join(exp.experiment_dir, "tune")


def runs_dir(exp: ExperimentConfig) -> str:
    return storage.join(tune_dir(exp), "runs")


def _sampler(exp: ExperimentConfig) -> optuna.samplers.BaseSampler:
    seed = exp.tune.seed
    if exp.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if exp.tune.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    # multivariate: the learning rates interact (a joint density, not one per parameter); constant liar: a
    # running trial counts as a poor one, so trials started together do not all land on the same point
    options = dict(seed=seed, n_startup_trials=exp.tune.tpe_startup_trials, multivariate=True, constant_liar=True)
    if exp.tune.tpe_good_fraction == OPTUNA_GOOD_FRACTION:  # Optuna's gamma, untouched
        return optuna.samplers.TPESampler(**options)
    with warnings.catch_warnings():  # Optuna 4.9 deprecated `gamma` (gone in 6; pyproject pins optuna < 6)
        warnings.simplefilter("ignore", FutureWarning)
        return optuna.samplers.TPESampler(**options, gamma=partial(good_trials, fraction=exp.tune.tpe_good_fraction))


def good_trials(n: int, fraction: float) -> int:
    """TPE's gamma: how many of ``n`` trials form its "good" density (Optuna's default with 0.1 for ``fraction``).
    Module-level (a ``partial``, not a lambda), as Tune pickles the searcher with its sampler."""
    return min(math.ceil(fraction * n), 25)


class EarlyStopAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a trial the scheduler stopped early (before ``max_epochs``) was PRUNED.

    Ray's OptunaSearch tells every trial as COMPLETE with its last value, so the sampler compares an epoch-1 value
    of a stopped trial with the epoch-9 values of finished ones as if both were final: TPE's "good" set is then
    whichever trials ran longest. As PRUNED (its per-epoch values were reported as intermediate values), Optuna's
    TPE ranks finished trials by their value and stopped ones below them, by how far they got and their last
    value (what ``optuna.pruners`` gives it natively). Diverged trials stay COMPLETE with their worst-ranking value.
    """

    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped_early = (
            not error
            and result is not None
            and result.get(TRAINING_ITERATION, self.max_epochs) < self.max_epochs
            and not result.get("diverged")
        )
        if stopped_early and self.metric in result:
            # Tune hands the result that made the scheduler stop a trial to on_trial_complete only: report it as
            # the trial's last intermediate value, which is what Optuna ranks a pruned trial by
            self.on_trial_result(trial_id, result)
        super().on_trial_complete(trial_id, None if stopped_early else result, error)


def _searcher(exp: ExperimentConfig) -> OptunaSearch:
    space = load_space(exp.search_space, known_keys=TRAIN_KEYS)
    storage = optuna.storages.RDBStorage(exp.tune.study_storage) if exp.tune.study_storage else None
    return EarlyStopAwareOptunaSearch(
        max_epochs=exp.tune.max_epochs,
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
