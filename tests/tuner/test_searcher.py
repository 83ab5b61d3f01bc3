"""The searcher Tune drives: a trial that ASHA stopped early reaches Optuna as PRUNED (real Optuna, no cluster); TPE's
good share; the trial-epoch budget that ends a search."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search_spaces import define_by_run, load_space
from tuner.searcher import EarlyStopAwareOptunaSearch


def _search(max_epochs: int = 4) -> EarlyStopAwareOptunaSearch:
    space = load_space("mtl")
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=2, multivariate=True, constant_liar=True)
    return EarlyStopAwareOptunaSearch(
        max_epochs=max_epochs, space=define_by_run(space), metric="m", mode="max", sampler=sampler
    )


def _run(search, trial_id: str, values: list[float], **final) -> None:
    """One value per epoch, as Tune hands them over: every result but the last to on_trial_result, the last (the
    one after which the trial ended, or the scheduler stopped it) to on_trial_complete only."""
    search.suggest(trial_id)
    results = [{"m": value, "training_iteration": epoch} for epoch, value in enumerate(values, start=1)]
    for result in results[:-1]:
        search.on_trial_result(trial_id, result)
    search.on_trial_complete(trial_id, {**results[-1], **final})


def test_stopped_early_is_pruned_finished_and_diverged_are_complete(tmp_path) -> None:
    search = _search(max_epochs=4)
    _run(search, "stopped", [0.3])  # ASHA stopped it at the first rung
    _run(search, "finished", [0.2, 0.4, 0.5, 0.6])
    _run(search, "diverged", [0.1, 0.0], diverged=1.0)  # the train loop ended it: a real, worst-ranking value
    search.suggest("failed")
    search.on_trial_complete("failed", None, error=True)
    trials = {t.number: t for t in search._ot_study.trials}
    stopped, finished, diverged, failed = (trials[i] for i in range(4))
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {1: 0.3}
    assert finished.state == TrialState.COMPLETE and finished.value == 0.6
    assert finished.intermediate_values == {1: 0.2, 2: 0.4, 3: 0.5}
    assert diverged.state == TrialState.COMPLETE and diverged.value == 0.0
    assert failed.state == TrialState.FAIL
    # the study's best is a finished trial, not a short one whose early value happens to be higher
    _run(search, "lucky_start", [0.9])
    assert search._ot_study.best_trial.number == 1
    # Tune checkpoints the searcher and restores it on `--resume`: max_epochs survives
    search.save_to_dir(str(tmp_path))
    restored = _search(max_epochs=99)
    restored.restore_from_dir(str(tmp_path))
    assert restored.max_epochs == 4 and len(restored._ot_study.trials) == 5


def test_tpe_good_share_comes_from_the_experiment_and_survives_pickling() -> None:
    """tune.tpe_good_fraction sets how many trials TPE models as good (Optuna's gamma); Tune pickles the searcher
    with its sampler when it saves the experiment, so the setting must survive that."""
    import pickle
    import warnings

    from tuner.config import ExperimentConfig
    from tuner.searcher import make_sampler

    def experiment(**tune) -> ExperimentConfig:
        return ExperimentConfig(name="x", data={"format": "isic2019", "root": "/data"}, tune=tune)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's deprecation of gamma is skintune's to handle, not the user's
        wide = pickle.loads(pickle.dumps(make_sampler(experiment(tpe_good_fraction=0.25))))
        default = make_sampler(experiment())
    assert [wide._gamma(n) for n in (4, 8, 12, 40, 400)] == [1, 2, 3, 10, 25]
    assert default._gamma is None  # Optuna's own gamma, untouched


def test_epoch_budget_ends_the_search_at_its_trial_epochs() -> None:
    """tune.max_trial_epochs: the stopper Tune consults after every result ends the whole search once the trials'
    epochs add up to the budget; a restored trial reporting its last epoch again is not counted twice."""
    from tuner.searcher import EpochBudget

    budget = EpochBudget(6)
    for trial, epochs in (("a", 3), ("b", 1)):
        for epoch in range(1, epochs + 1):
            assert budget(trial, {"training_iteration": epoch}) is False  # no single trial is stopped by it
    assert not budget.stop_all()
    budget("a", {"training_iteration": 3})  # a repeat after a restore
    assert not budget.stop_all() and sum(budget.epochs.values()) == 4
    budget("c", {"training_iteration": 1})
    assert not budget.stop_all()
    budget("b", {"training_iteration": 2})
    assert budget.stop_all() and budget.epochs == {"a": 3, "b": 2, "c": 1}
