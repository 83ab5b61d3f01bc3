"""skintune tune on a real local Ray: OptunaSearch + ASHA, results table, TensorBoard server (kill and resume:
test_faults.py)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from trainables.errors import UserError
from tuner.layout import tune_dir
from tuner.tensorboard_server import command
from tuner.tune_run import check_start, run_tune

pytestmark = pytest.mark.ray


def _get_json(url: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def _trial_dirs(exp) -> list[Path]:
    return sorted(p for p in Path(tune_dir(exp)).glob("trial_driver_*") if p.is_dir())


def test_search_with_early_stopping_table_and_tensorboard(ray_cluster, make_experiment, tmp_path, free_port, capsys):
    # val/loss (continuous) as the objective so that ASHA can tell trials apart after one epoch
    study = f"sqlite:///{tmp_path / 'study.db'}"  # kept for optuna-dashboard
    exp = make_experiment(
        "search",
        tune={
            "num_samples": 5,
            "max_epochs": 3,
            "grace_period": 1,
            "reduction_factor": 2,
            "metric": "val/loss",
            "mode": "min",
            "study_storage": study,
        },
    )
    _, table = run_tune(exp)
    printed = capsys.readouterr().out

    saved = pd.read_parquet(Path(tune_dir(exp), "results.parquet"))
    assert len(saved) == len(table) == 5 and Path(tune_dir(exp), "results.csv").exists()
    assert {"param/w_site", "param/lr_head", "param/lesion_loss", "param/backbone"} <= set(saved.columns)
    assert saved["param/lr_head"].notna().all() and saved["param/w_site"].between(0, 2).all()
    focal = saved["param/lesion_loss"] == "focal"
    assert saved.loc[focal, "param/focal_gamma"].notna().all() and saved.loc[~focal, "param/focal_gamma"].isna().all()
    assert (saved["status"] != "error").all() and (saved["epochs"] >= 1).all()
    stopped = saved[saved["status"] == "stopped_early"]
    assert len(stopped) >= 1 and (stopped["epochs"] < 3).all()
    # a trial that started after an early stop still got its resources and ran
    order = saved.sort_values("trial_path")
    assert order["epochs"].iloc[-1] >= 1
    assert saved["checkpoint_path"].map(lambda p: Path(p, "model.safetensors").exists()).all()
    resolved = yaml.safe_load(Path(exp.experiment_dir, "experiment.yaml").read_text())
    assert resolved["tune"]["num_samples"] == 5 and resolved["name"] == "search"

    # Optuna saw the stopped trials as PRUNED (with their epochs as intermediate values), the others as COMPLETE
    trials = optuna.load_study(study_name="search", storage=study).trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 5 and len(pruned) == len(stopped) and len(complete) == 5 - len(stopped)
    assert all(t.intermediate_values and max(t.intermediate_values) < 3 for t in pruned)
    assert sorted(t.value for t in complete) == sorted(saved.loc[saved["status"] != "stopped_early", "last_objective"])

    # the console: one line per trial with its status, epochs and best objective as in the table; no Tune tables
    # and no TensorBoard hint into Ray's session folder (tests/tuner/test_faults.py: the CLI's worker output)
    lines = re.findall(
        r"^tune: \[(\d)/5\] trial (\w+) (completed|stopped early), (\d) epochs?, val/loss ([\d.]+)", printed, re.M
    )
    assert sorted(int(n) for n, *_ in lines) == [1, 2, 3, 4, 5] and len({t for _, t, *_ in lines}) == 5, printed
    by_id = saved.set_index("trial_id")
    for _, trial_id, status, epochs, value in lines:
        assert (
            status.replace(" ", "_") == by_id.loc[trial_id, "status"] and int(epochs) == by_id.loc[trial_id, "epochs"]
        )
        assert float(value) == pytest.approx(by_id.loc[trial_id, "best_objective"], abs=1e-4)
    for ray_text in ("Trial status", "/tmp/ray/session_", "To visualize your results", "Reporting training result"):
        assert ray_text not in printed, ray_text
    assert "A new study created in RDB" in (Path(exp.experiment_dir) / "logs" / "driver.log").read_text()

    # an existing experiment is never overwritten
    with pytest.raises(UserError, match="--resume"):
        check_start(exp, resume=False)

    # every trial has event files, served by a real TensorBoard on a loopback port
    trials = _trial_dirs(exp)
    assert len(trials) == 5 and all(list(t.glob("events.out.tfevents.*")) for t in trials)
    port = free_port()
    cmd = command(exp.storage, exp.name, port) + ["--reload_interval", "1"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            tags = _get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")
            runs = {run: set(t) for run, t in tags.items() if "trial_driver_" in run}
            if len(runs) == 5 and all("val/lesion_bacc" in t for t in runs.values()) or time.time() > deadline:
                break
            time.sleep(1)
        assert len(runs) == 5
        for run, run_tags in runs.items():
            assert {"val/lesion_bacc", "train/loss", "ray/tune/val/loss"} <= run_tags, run
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_resume_without_an_experiment_is_a_clear_error(make_experiment):
    # killing the driver and resuming (at three points of one experiment): tests/tuner/test_faults.py
    with pytest.raises(UserError, match="no experiment to resume"):
        check_start(make_experiment("never-ran"), resume=True)
