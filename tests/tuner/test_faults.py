"""Faults on a real local Ray, each a real SIGKILL: the tuning driver at three points of one experiment (resumed
with `skintune tune --resume`), a Train worker in the middle of an epoch (FailureConfig restarts the group).
`prepare` killed part-way: tests/data/test_prepare.py; retrain, compare and export killed and rerun:
tests/test_demo.py."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tuner.layout import runs_dir, tune_dir

pytestmark = pytest.mark.ray

POLL_S = 0.05  # a smoke epoch takes ~0.5 s here: poll well inside one
MAX_EPOCHS = 3


# -- what the experiment folder shows while a driver runs ---------------------------------------------------------
def _trial_dirs(exp) -> list[Path]:
    return sorted(p for p in Path(tune_dir(exp)).glob("trial_driver_*") if p.is_dir())


def _trial_id(trial: Path) -> str:
    return trial.name.split("_")[2]  # trial_driver_<id>_<n>_<params>_<date>


def _progress(trial: Path) -> list[dict]:
    """progress.csv rows Tune has logged (a line still being written is left out)."""
    path = trial / "progress.csv"
    if not path.exists():
        return []
    text = path.read_text()
    return list(csv.DictReader(text[: text.rfind("\n") + 1].splitlines()))


def _epochs(trial: Path) -> list[int]:
    return [int(float(row["epoch"])) for row in _progress(trial)]


def _latest_epoch(run: Path) -> int | None:
    """The last epoch whose checkpoint the Train run in ``run`` has registered (what a restart resumes from); None
    while the snapshot is being rewritten."""
    path = run / "checkpoint_manager_snapshot.json"
    if not path.exists():
        return 0
    try:
        return int(json.loads(path.read_text())["latest_checkpoint_result"]["metrics"]["epoch"])
    except (json.JSONDecodeError, OSError, KeyError, TypeError):
        return None


def _durable_epoch(exp, trial: Path) -> int | None:
    return _latest_epoch(Path(runs_dir(exp), _trial_id(trial)))


@dataclass
class Trial:
    path: Path
    epochs: list[int]  # epochs in progress.csv
    durable: int | None  # last registered checkpoint's epoch

    @property
    def done(self) -> bool:
        return bool(self.epochs) and self.epochs[-1] == MAX_EPOCHS


def _look(exp) -> list[Trial]:
    return [Trial(t, _epochs(t), _durable_epoch(exp, t)) for t in _trial_dirs(exp)]


@dataclass
class Kill:
    point: str
    trials: list[Trial]  # as seen right before the SIGKILL
    progress: dict[str, str] = field(default_factory=dict)  # finished trials' progress.csv at the kill


def _drive(config: Path, resume: bool, log: Path, point: str | None = None, kill_when=None, exp=None):
    """Run `skintune tune` as a subprocess; SIGKILL it once ``kill_when(trials)`` holds. Returns a Kill, or None
    when the driver finished first (then the point was missed)."""
    cmd = [sys.executable, "-m", "tuner.cli", "tune", "--config", str(config)] + (["--resume"] if resume else [])
    with log.open("a") as out:
        driver = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    try:
        while driver.poll() is None:
            assert time.time() < deadline, f"the driver did not finish in time, see {log}"
            if kill_when is not None:
                trials = _look(exp)
                if kill_when(trials):
                    progress = {t.path.name: (t.path / "progress.csv").read_text() for t in trials if t.done}
                    os.kill(driver.pid, signal.SIGKILL)
                    driver.wait(timeout=30)
                    return Kill(point, trials, progress)
            time.sleep(POLL_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    assert driver.returncode == 0, f"the driver failed, see {log}:\n{log.read_text()[-3000:]}"
    return None


def _during(index: int):
    """Once ``index`` trials have finished, while the next one runs with a checkpoint registered and epochs to go
    (for the last trial, also wait for Tune's first row or a second checkpoint: a resume then has rows to keep)."""

    def when(trials: list[Trial]) -> bool:
        finished = [t for t in trials if t.done]
        running = [t for t in trials if not t.done]
        if len(finished) != index or len(running) != 1:
            return False
        t = running[0]
        if not t.durable or t.durable >= MAX_EPOCHS:
            return False
        return index == 0 or t.epochs != [] or t.durable >= 2

    return when


def _between(trials: list[Trial]) -> bool:
    """Right after the first trial's last row, before the next trial has any."""
    finished = [t for t in trials if t.done]
    return len(finished) == 1 and all(not t.epochs for t in trials if not t.done)


def _steps_by_file(trial: Path, tag: str) -> list[list[int]]:
    """The steps of ``tag`` in each event file of the trial (one file per start of the rank-0 worker)."""
    out = []
    for path in sorted(trial.glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3])):  # by start
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out.append([e.step for e in acc.Scalars(tag)])
    return out


def test_driver_sigkilled_during_between_and_at_the_last_trial_resumes_each_trial_once(
    ray_cluster, make_experiment, tmp_path
):
    exp = make_experiment(
        "killed",
        tune={"num_samples": 3, "max_epochs": MAX_EPOCHS, "scheduler": "none", "max_concurrent_trials": 1},
        train={"workers_per_trial": 1},  # (two DDP workers: the worker-kill test below)
    )
    config, log = tmp_path / "killed.yaml", tmp_path / "drivers.log"
    plan = [("during the first trial", _during(0)), ("between trials", _between), ("during the last trial", _during(2))]
    kills: list[Kill] = []
    missed: list[str] = []
    resume = False
    for point, when in plan:
        kill = _drive(config, resume, log, point, when, exp)
        resume = True
        if kill is None:  # the driver finished the experiment first: nothing left to interrupt
            missed += [p for p, _ in plan[len(kills) :]]
            break
        kills.append(kill)
    else:
        assert _drive(config, True, log) is None  # the last resume runs to the end

    # what each kill interrupted, as seen right before it
    for kill in kills:
        finished = [t for t in kill.trials if t.done]
        running = [t for t in kill.trials if not t.done]
        if kill.point == "between trials":
            assert len(finished) == 1 and not any(t.epochs for t in running)
        else:
            assert len(finished) == (0 if kill.point == "during the first trial" else 2) and len(running) == 1
            assert 1 <= running[0].durable < MAX_EPOCHS

    # the experiment finished: three trials, each run once to the last epoch
    trials = _trial_dirs(exp)
    assert len(trials) == 3, [t.name for t in trials]  # no trial started twice
    table = pd.read_parquet(Path(tune_dir(exp), "results.parquet"))
    assert len(table) == 3 and (table["status"] == "completed").all() and (table["epochs"] == MAX_EPOCHS).all()
    for trial in trials:
        rows = _progress(trial)
        epochs = [int(float(r["epoch"])) for r in rows]
        # each epoch logged once, in order, up to the last (a restart from scratch would repeat 1)
        assert len(epochs) == len(set(epochs)) and epochs == sorted(epochs), (trial.name, epochs)
        assert epochs[-1] == MAX_EPOCHS and [int(float(r["training_iteration"])) for r in rows] == epochs
        # a row may be missing only where a kill came after the epoch's checkpoint and before Tune logged it (a
        # restart reports the epoch it resumes from again, but not those before it: Ray Tune keeps no history)
        lost = {
            e
            for k in kills
            for t in k.trials
            if t.path == trial
            for e in range(1, (t.durable or 0) + 1)
            if e not in t.epochs
        }
        assert set(range(1, MAX_EPOCHS + 1)) - set(epochs) <= lost, (trial.name, epochs, lost)
    # the drivers' console: a line for each trial as it ended (twice when a kill came between its last row and
    # Tune's saved state: it ran again), none of Ray's worker output, Tune's tables or its TensorBoard hint; those
    # went to the experiment's driver log
    console = log.read_text()
    ended = re.findall(r"^tune: \[\d/3\] trial (\w+) completed, 3 epochs, val/lesion_bacc [\d.]+", console, re.M)
    assert set(ended) == set(table["trial_id"]), console[-3000:]
    for ray_text in ("Reporting training result", "/tmp/ray/session_", "Trial status", "(RayTrainWorker"):
        assert ray_text not in console, ray_text
    driver_log = (Path(exp.experiment_dir) / "logs" / "driver.log").read_text()
    assert driver_log.count("---- skintune tune --config") == len(kills) + 1  # every driver session appended
    assert "Reporting training result" in driver_log and "(RayTrainWorker pid=" in driver_log

    # a trial finished before a kill kept its results: not run or reported again
    for kill in kills:
        for name, text in kill.progress.items():
            assert (Path(tune_dir(exp)) / name / "progress.csv").read_text() == text, (kill.point, name)

    # TensorBoard, read back with TensorBoard's own reader: every epoch once, per trial
    for trial in trials:
        acc = EventAccumulator(str(trial), size_guidance={"scalars": 0})
        acc.Reload()
        val = [e.step for e in acc.Scalars("val/lesion_bacc")]
        assert sorted(val) == list(range(1, MAX_EPOCHS + 1)), (trial.name, val)
        train = [e.step for e in acc.Scalars("train/loss")]
        assert sorted(train) == list(range(len(train))) and len(train) % MAX_EPOCHS == 0, (trial.name, train)
        tune_steps = [e.step for e in acc.Scalars("ray/tune/epoch")]
        assert len(tune_steps) == len(set(tune_steps)) and tune_steps[-1] == MAX_EPOCHS, (trial.name, tune_steps)

    # a trial killed mid-way continued from its checkpoint: the rank-0 worker's first start logged the epochs up to
    # the checkpoint (at least the one registered when the kill was decided), its restart only the rest
    for kill in kills:
        running = [t for t in kill.trials if not t.done and t.durable]
        for t in running:
            files = _steps_by_file(t.path, "val/lesion_bacc")
            assert len(files) == 2, (kill.point, t.path.name, files)
            before, after = files
            assert before == list(range(1, before[-1] + 1)) and before[-1] >= t.durable, (kill.point, files)
            assert after == list(range(before[-1] + 1, MAX_EPOCHS + 1)), (kill.point, files)

    assert not missed, f"kill point(s) missed: {missed}; kills landed: {[k.point for k in kills]}"
    print("kills:", [(k.point, [(t.path.name[13:21], t.epochs, t.durable) for t in k.trials]) for k in kills])


# -- a Train worker SIGKILLed in the middle of an epoch ----------------------------------------------------------
def _train_workers() -> list:
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


def test_worker_sigkilled_mid_epoch_restarts_from_the_checkpoint_with_its_optimizer_state(
    ray_cluster, make_experiment, tmp_path
):
    from trainables.checkpoint import load_meta, load_train_state

    epochs = 2  # killed inside the last epoch: the restart trains it only
    # 320 px crops of the 48 px smoke images: epochs of a few seconds, longer than Train takes to register a
    # checkpoint (its controller polls the workers every 2 s by default, 0.5 s in the tests: tests/conftest.py),
    # so the kill lands inside epoch 2
    exp = make_experiment(
        "worker-kill",
        tune={"worker_max_failures": 1},  # FailureConfig(max_failures) of the Train run (tuner/train_run.py)
        train={"workers_per_trial": 2, "epochs": epochs, "image_size": 320},
    )
    run = Path(exp.experiment_dir, "run")
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "tuner.cli", "train", "--config", str(tmp_path / "worker-kill.yaml"), "--name", "run"]
    with log.open("w") as out:
        train = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    killed, at_kill, restarted = None, None, set()
    deadline = time.time() + 240
    try:
        workers = []
        while len(workers) != 2:  # the worker group is up
            assert train.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            workers = _train_workers()
            time.sleep(0.2)
        while _latest_epoch(run) != 1:  # epoch 1's checkpoint is registered: the workers are in epoch 2
            assert train.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(POLL_S)
        at_kill = sorted(p.name for p in run.glob("checkpoint_*") if p.is_dir())
        killed = workers[0].pid
        os.kill(killed, signal.SIGKILL)
        old = {w.pid for w in workers}
        while train.poll() is None and not restarted:  # FailureConfig: a new worker group (both ranks)
            pids = {w.pid for w in _train_workers()}
            restarted = pids if len(pids) == 2 and not pids & old else set()
            time.sleep(0.2)
        assert train.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        if train.poll() is None:
            train.kill()
            train.wait(timeout=30)
    assert len(at_kill) == 1, at_kill  # no checkpoint of epoch 2 yet: the kill came inside epoch 2
    assert restarted, "the worker group was not seen restarting"
    assert f"train: {epochs} epoch(s)" in log.read_text()

    # the fit finished the right number of epochs, from the checkpoint of epoch 1 on
    assert _latest_epoch(run) == epochs
    final = (
        run
        / json.loads((run / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"][
            "checkpoint_dir_name"
        ]
    )
    assert load_meta(final)["epoch"] == epochs - 1
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/lesion_bacc")] == list(range(1, epochs + 1))
    losses = [e.step for e in acc.Scalars("train/loss")]
    steps = len(losses) // epochs  # optimizer steps per epoch
    assert losses == list(range(epochs * steps))
    starts = _steps_by_file(run / "tensorboard", "val/lesion_bacc")
    assert starts == [[1], list(range(2, epochs + 1))]  # the restart trained epochs 2.. only: nothing before again
    starts = _steps_by_file(run / "tensorboard", "train/loss")
    assert starts == [list(range(steps)), list(range(steps, epochs * steps))]

    # the optimizer and LR schedule continued: a fresh optimizer would have counted the restart's steps only
    state = load_train_state(final)
    assert state["epoch"] == epochs - 1
    assert state["scheduler"]["last_epoch"] == epochs * steps
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {float(epochs * steps)}
    assert load_meta(final)["metrics"]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine schedule ended at 0


# -- a trial that diverges inside a search ------------------------------------------------------------------------
def test_a_diverging_trial_is_recorded_with_a_finite_objective_and_the_search_goes_on(
    make_experiment, ray_cluster, tmp_path, capsys
):
    import math

    import optuna

    from tuner.tune_run import run_tune

    space = tmp_path / "diverge-space.yaml"
    # a head learning rate of 1e8 (no clipping, no warm-up) makes the loss non-finite within the first epoch; the
    # random sampler's seed 0 draws it for the first of two trials, and 1e-3 for the second
    space.write_text(
        "params:\n"
        "  backbone: {type: fixed, value: test_efficientnet}\n"
        "  pretrained: {type: fixed, value: false}\n"
        "  lr_head: {type: categorical, choices: [1.0e+8, 1.0e-3], role: nuisance}\n"
    )
    study = f"sqlite:///{tmp_path / 'study.db'}"
    exp = make_experiment(
        "diverge-search",
        search_space=str(space),
        tune={
            "num_samples": 2,
            "max_epochs": 2,
            "scheduler": "none",
            "sampler": "random",
            "seed": 0,
            "max_concurrent_trials": 1,
            "study_storage": study,
        },
        train={"workers_per_trial": 1, "grad_clip": 0.0, "warmup_epochs": 0},
    )
    _, table = run_tune(exp)
    printed = capsys.readouterr().out

    table = pd.read_parquet(Path(tune_dir(exp), "results.parquet"))
    assert len(table) == 2
    diverged = table[table["status"] == "diverged"]
    assert len(diverged) == 1 and float(diverged["param/lr_head"].iloc[0]) == 1.0e8
    assert table["trial_id"].iloc[0] != diverged["trial_id"].iloc[0]
    assert table["status"].iloc[0] == "completed" and table["epochs"].iloc[0] == 2  # the search went on
    # the diverged trial's objective is finite and the worst in the table (it ranks last, never "best")
    assert all(math.isfinite(v) for v in table["best_objective"])
    assert table["best_objective"].iloc[-1] == diverged["best_objective"].iloc[0]
    assert diverged["best_objective"].iloc[0] < table["best_objective"].iloc[0]
    assert diverged["epochs"].iloc[0] == 1  # it stopped at the first non-finite loss, not after max_epochs
    # the console says so in the trial's line, in the table's words
    assert f"tune: [1/2] trial {diverged['trial_id'].iloc[0]} diverged, 1 epoch, val/lesion_bacc " in printed, printed
    # the searcher was told a finite value for every trial (Optuna refuses NaN: such a trial would be FAILED)
    trials = optuna.load_study(study_name=exp.name, storage=study).trials
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(math.isfinite(t.value) for t in trials)
    assert [t.params["lr_head"] for t in trials] == [1.0e8, 1.0e-3]  # it diverged first, and the search went on
