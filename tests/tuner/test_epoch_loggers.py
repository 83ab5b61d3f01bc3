"""Tune's loggers log each epoch of a trial once, also across a driver restart (no Ray: the loggers' own calls)."""

from __future__ import annotations

import csv
import os
from types import SimpleNamespace

from tuner.tune_callbacks import EpochReportCallback, LoggedEpochs, epoch_loggers


class _Trial:
    """What Tune's loggers use of a Trial."""

    def __init__(self, local_path, trial_id="t1"):
        self.trial_id, self.local_path = trial_id, str(local_path)
        self.config, self.evaluated_params, self.checkpoint = {"lr": 0.1}, {"lr": 0.1}, None

    def init_local_path(self):
        os.makedirs(self.local_path, exist_ok=True)


def _trial(tmp_path, trial_id="t1"):
    return _Trial(tmp_path / trial_id, trial_id)


def _log(loggers, trial, epochs):
    for epoch in epochs:
        result = {"epoch": epoch, "training_iteration": epoch, "val/loss": 1.0 / epoch, "done": False}
        for logger in loggers:
            logger.log_trial_result(epoch, trial, result)


def _rows(trial) -> list[int]:
    with open(f"{trial.local_path}/progress.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_a_repeated_epoch_is_logged_once_also_after_a_driver_restart(tmp_path):
    trial = _trial(tmp_path)
    first = epoch_loggers()
    _log(first, trial, [1, 2, 2])  # a restarted Train run reports the epoch it resumed from again
    for logger in first:
        logger.log_trial_end(trial)
    assert _rows(trial) == [1, 2]

    # a new driver (resume): what the trial logged is read back from its progress.csv
    second = epoch_loggers()
    _log(second, trial, [2, 3, 3])
    for logger in second:
        logger.log_trial_end(trial)
    assert _rows(trial) == [1, 2, 3]
    assert len((tmp_path / "t1" / "result.json").read_text().splitlines()) == 3


def test_every_logger_gets_the_same_verdict_for_one_result(tmp_path):
    logged, trial = LoggedEpochs(), _trial(tmp_path)
    result = {"epoch": 1}
    assert [logged.repeat(trial, result) for _ in range(3)] == [False, False, False]  # CSV, JSON, TBX
    again = {"epoch": 1}
    assert logged.repeat(trial, again) and logged.repeat(trial, again)
    assert not logged.repeat(trial, {"no": "epoch"})  # results without an epoch pass through


def test_tune_iteration_is_the_epoch():
    seen = []
    callback = EpochReportCallback.__new__(EpochReportCallback)  # no Tune session needed for the metrics part
    callback._training_actor_item_queue = SimpleNamespace(put=seen.append)
    callback.after_report(None, [{"epoch": 3, "val/loss": 0.5}, {"epoch": 3}], None)
    assert seen == [{"epoch": 3, "val/loss": 0.5, "training_iteration": 3}]
