"""The search algorithm of ``skintune tune``: an Optuna sampler (TPE, random or QMC) behind Ray Tune's
``OptunaSearch``, told which trials the scheduler stopped early, and the search's epoch budget.

Tune pickles the searcher (with its sampler) and the stopper into the experiment's state, so everything here is
importable at module level (no lambdas)."""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any

import optuna
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from search_spaces import define_by_run
from tuner.arms import arm_space, is_primary
from tuner.config import OPTUNA_GOOD_FRACTION, ExperimentConfig


def make_sampler(exp: ExperimentConfig) -> optuna.samplers.BaseSampler:
    seed = exp.tune.seed
    if exp.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if exp.tune.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    # multivariate: the learning rates interact (a joint density, not one per parameter); constant liar: a
    # running trial counts as a poor one, so trials started together do not all land on the same point
    options: dict[str, Any] = dict(
        seed=seed, n_startup_trials=exp.tune.tpe_startup_trials, multivariate=True, constant_liar=True
    )
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
        if stopped_early and result is not None and self.metric in result:
            # Tune hands the result that made the scheduler stop a trial to on_trial_complete only: report it as
            # the trial's last intermediate value, which is what Optuna ranks a pruned trial by
            self.on_trial_result(trial_id, result)
        super().on_trial_complete(trial_id, None if stopped_early else result, error)


def make_searcher(exp: ExperimentConfig, arm: str | None = None) -> OptunaSearch:
    """The searcher of one of the experiment's searches (:func:`tuner.arms.arm_space`); all get the same sampler and
    seed. Its Optuna study is named after the experiment (``<name>-<arm>`` for another arm's, so that all can share
    ``study_storage``)."""
    space = arm_space(exp, arm)
    study_storage = optuna.storages.RDBStorage(exp.tune.study_storage) if exp.tune.study_storage else None
    return EarlyStopAwareOptunaSearch(
        max_epochs=exp.tune.max_epochs,
        space=define_by_run(space),
        metric=exp.tune.metric,
        mode=exp.tune.mode,
        sampler=make_sampler(exp),
        study_name=exp.name if is_primary(exp, arm) else f"{exp.name}-{arm}",
        storage=study_storage,
        points_to_evaluate=[space.warm_start()],
    )


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
