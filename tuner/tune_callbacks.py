"""What ``skintune tune`` hooks into Ray: the Train callback that reports each epoch to Tune
(:class:`EpochReportCallback`), Tune's loggers, each logging a trial's epoch once (:func:`epoch_loggers`), and the
console's one line per trial (:class:`TrialLines`).

Tune pickles its callbacks into the experiment's state, so they are importable at module level."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback, TBXLoggerCallback


class EpochReportCallback(TuneReportCallback):
    """``TuneReportCallback`` with Tune's ``training_iteration`` set to the worker's epoch.

    Tune counts iterations itself and starts again at 1 when a trial is restored without a Tune checkpoint (a
    resumed experiment: the trial's Train run continues from its own checkpoint), which made a resumed trial's
    ``ray/tune/*`` TensorBoard steps repeat and ASHA see it at the wrong rung. Tune keeps a reported value."""

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and "epoch" in metrics[0]:
            metrics = [{**metrics[0], "training_iteration": int(metrics[0]["epoch"])}, *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)


class LoggedEpochs:
    """The last epoch each trial's Tune logs hold, so that a result is logged once per epoch.

    A restarted Train run reports the epoch it resumes from once more (trainables/train_loop.py: Tune may not
    have logged it before a kill). And Tune saves its experiment state only every ~10 s, so a driver killed after
    a trial's last rows were logged can leave that trial RUNNING in the saved state: on resume it runs again and
    its finished Train run reports its last epoch again. Such a repeat is left out of progress.csv, result.json
    and Tune's TensorBoard events. After a driver restart the last logged epoch is read from the trial's
    progress.csv (where the driver has it: a local experiment)."""

    def __init__(self):
        self._last: dict[str, float] = {}  # -inf: none logged
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


class _OncePerEpoch(LoggerCallback):
    """Mixed in before one of Tune's loggers: its log_trial_result skips a repeated epoch."""

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


class TrialLines(Callback):
    """One console line per trial that ends, e.g.
    ``tune: [2/4] trial 1aea97bd completed, 2 epochs, val/lesion_bacc 0.6123 (best so far 0.6123, trial 1aea97bd)``.

    The status is the results table's (tuner/results.py): completed, stopped early (by ASHA or the trial-epoch
    budget), diverged, error; the objective is the trial's best epoch's. A failed trial that Tune retries gets a
    line too. Tune's own tables are shown with ``skintune --verbose`` (tuner/ray_runtime.py)."""

    def __init__(self, metric: str, mode: str, max_epochs: int, num_samples: int, prefix: str = "tune"):
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.num_samples, self.prefix = num_samples, prefix

    def on_trial_complete(self, iteration: int, trials: list, trial, **info):
        self._line(trials, trial, self._status(trial.last_result or {}))

    def on_trial_error(self, iteration: int, trials: list, trial, **info):
        self._line(trials, trial, "error", f"; see {trial.path}/error.txt")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info):
        epochs = int((trial.last_result or {}).get("epoch", 0) or 0)
        print(
            f"{self.prefix}: trial {trial.trial_id} failed after {_count(epochs, 'epoch')} "
            f"(failure {trial.num_failures}); Tune retries it",
            flush=True,
        )

    def _status(self, last: dict) -> str:
        if float(last.get("diverged", 0.0) or 0.0) >= 1.0:
            return "diverged"
        return "completed" if int(last.get("epoch", 0) or 0) >= self.max_epochs else "stopped early"

    def _best(self, trial) -> float | None:
        found = (trial.metric_analysis or {}).get(self.metric)
        return None if not found else float(found[self.mode])

    def _line(self, trials: list, trial, status: str, tail: str = "") -> None:
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id}
        epochs = int((trial.last_result or {}).get("epoch", 0) or 0)
        done = f"[{len(ended)}/{self.num_samples}]"
        text = f"{self.prefix}: {done} trial {trial.trial_id} {status}, {_count(epochs, 'epoch')}"
        value = self._best(trial)
        if value is not None and math.isfinite(value):
            scored = [(v, t.trial_id) for t in trials if (v := self._best(t)) is not None and math.isfinite(v)]
            pick = max if self.mode == "max" else min
            best = pick(v for v, _ in scored)
            best_id = next(i for v, i in scored if v == best)  # on a tie, the earliest trial (as the table has it)
            text += f", {self.metric} {value:.4f} (best so far {best:.4f}, trial {best_id})"
        print(text + tail, flush=True)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
