"""Early stopping survives a resume: after `Tuner.restore`, ASHA's rungs still hold the results of the trials that
reported before the interruption (tuner/tune_run.py, ResumableASHA). Ray Tune 2.60 restores the scheduler pickled
when the experiment started, with empty rungs (the control case below shows it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from tuner.config import TuneSection
from tuner.tune_run import ResumableASHA, make_scheduler

pytestmark = pytest.mark.ray
MAX_T = 3  # rungs at epochs 1 and 2 (grace 1, factor 2)


def _trainable(config: dict) -> None:
    """Reports ``score`` at each epoch. The worse trial fails before its first report until ``marker`` exists: the
    experiment ends with the better trial finished and the worse one to resume, as after a kill between them."""
    if config["score"] < 0.5 and not Path(config["marker"]).exists():
        raise RuntimeError("interrupted")
    for epoch in range(1, MAX_T + 1):
        tune.report({"score": config["score"], "epoch": epoch})


def _resumed_epochs(tmp_path: Path, scheduler) -> dict[float, int]:
    """Run the experiment (score 1.0, then 0.1, one at a time), resume it, return each trial's epochs by score."""
    marker = tmp_path / "marker"
    space = {"score": tune.grid_search([1.0, 0.1]), "marker": str(marker)}
    first = tune.Tuner(
        _trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path), verbose=0),
    ).fit()
    assert first.num_errors == 1 and first.num_terminated == 1
    marker.touch()
    grid = tune.Tuner.restore(str(tmp_path / "asha"), trainable=_trainable, resume_errored=True).fit()
    assert grid.num_errors == 0
    return {r.config["score"]: r.metrics["training_iteration"] for r in grid}


def test_asha_keeps_the_rungs_of_trials_that_reported_before_a_resume(ray_cluster, tmp_path):
    scheduler = make_scheduler(TuneSection(max_epochs=MAX_T, grace_period=1, reduction_factor=2))
    assert isinstance(scheduler, ResumableASHA)
    # the resumed trial (0.1) meets the first trial's 1.0 at the epoch-1 rung, restored from its progress.csv: stopped
    assert _resumed_epochs(tmp_path / "resumable", scheduler) == {1.0: MAX_T, 0.1: 1}


def test_ray_asha_alone_forgets_them(ray_cluster, tmp_path):
    # the control: Ray's own ASHA, restored with empty rungs, lets the worse trial run to the end
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=MAX_T, grace_period=1, reduction_factor=2)
    assert _resumed_epochs(tmp_path / "ray", scheduler) == {1.0: MAX_T, 0.1: MAX_T}
