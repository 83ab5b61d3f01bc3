"""Faults on a real local Ray, each a real SIGKILL: the tuning driver at three points of one experiment (resumed
with `skintune tune --resume`), a Train worker in the middle of an epoch (FailureConfig restarts the group), and
`skintune retrain`, `compare` and `export` part-way (run again). `prepare` killed part-way: tests/data."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tuner.tune_run import runs_dir, tune_dir

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

    epochs = 3
    # 320 px crops of the 48 px smoke images: epochs of a few seconds, longer than Train takes to register a
    # checkpoint (its controller polls the workers every 2 s), so the kill lands inside epoch 2
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


# -- retrain, compare and export killed and run again ------------------------------------------------------------
def _kill_when(cmd: list[str], ready, log: Path, timeout: float = 240) -> bool:
    """Run ``cmd``; SIGKILL it as soon as ``ready()`` holds. False when it finished first (then it must have
    succeeded)."""
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None:
            assert time.time() < deadline, log.read_text()[-3000:]
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return True
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return False


def test_retrain_compare_and_export_killed_then_rerun_skip_finished_work(ray_cluster, make_experiment, tmp_path):
    from tuner.cli import main
    from tuner.export import BUNDLE_FILES
    from tuner.results import write_results
    from tuner.tune_run import write_experiment_yaml

    # the search's outcome written directly (as tests/tuner/test_retrain.py does): no tune run needed here
    exp = make_experiment("rerun", tune={"max_epochs": 1}, train={"workers_per_trial": 1}, retrain={"seeds": 2})
    write_experiment_yaml(exp)
    Path(tune_dir(exp)).mkdir(parents=True)
    best = {"trial_id": "t0", "status": "completed", "epochs": 1, "last_objective": 0.5, "best_objective": 0.5}
    best.update({"best_epoch": 1, "checkpoint_path": None, "wall_s": 30.0, "error": None, "param/lr_head": 3e-3})
    write_results(pd.DataFrame([best]), tune_dir(exp))
    root = Path(exp.experiment_dir)
    common = ["--storage", exp.storage, "--experiment", "rerun"]
    cli = [sys.executable, "-m", "tuner.cli"]
    log = tmp_path / "commands.log"

    # retrain (2 seeds x 2 arms, two runs at a time) SIGKILLed once its first run has finished
    def finished() -> dict[Path, tuple[int, bytes]]:
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.glob("retrain/*/seed_*/metrics.json")}

    assert _kill_when([*cli, "retrain", *common], lambda: bool(finished()), log)
    done_before = finished()
    assert 1 <= len(done_before) < 4, sorted(done_before)
    predictions = {p.parent: p.parent.joinpath("predictions.parquet").stat().st_mtime_ns for p in done_before}
    rerun = subprocess.run([*cli, "retrain", *common], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    after = finished()
    assert len(after) == 4  # every run complete
    for path, (mtime, data) in done_before.items():  # finished runs were skipped: not trained or written again
        assert after[path] == (mtime, data), path
        assert path.parent.joinpath("predictions.parquet").stat().st_mtime_ns == predictions[path.parent]
    assert {json.loads(data)["seed"] for _, data in after.values()} == {0, 1}

    # compare SIGKILLed part-way, then twice more: the same results table, no partial file
    report = root / "report"
    killed = _kill_when([*cli, "compare", *common], lambda: (report / "results.parquet").exists(), log)
    assert main(["compare", *common]) == 0
    first = (report / "results.parquet").read_bytes()
    assert main(["compare", *common]) == 0
    assert (report / "results.parquet").read_bytes() == first
    assert (report / "report.html").stat().st_size > 0 and not list(report.glob(".*"))

    # export; part of the bundle deleted; export again: complete and the same metrics
    bundle = root / "export"
    assert main(["export", *common]) == 0
    metrics = (bundle / "metrics.json").read_text()
    for name in ("config.json", "model.torchscript.pt"):
        (bundle / name).unlink()
    assert main(["export", *common]) == 0
    assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)
    assert (bundle / "metrics.json").read_text() == metrics
    # export SIGKILLed while it writes: the previous bundle stays whole; the rerun tidies up
    temp = lambda: list(root.glob(".export.tmp-*"))  # noqa: E731
    export_killed = _kill_when([*cli, "export", *common], lambda: bool(temp()), log)
    if export_killed:
        assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)
    assert main(["export", *common]) == 0
    assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)
    assert (bundle / "metrics.json").read_text() == metrics and not list(root.glob(".export.*"))
    print("killed part-way: compare", killed, "export", export_killed)
