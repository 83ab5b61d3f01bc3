"""`tune.deterministic: true`: a search run twice takes the same decisions (the same configurations in the same
order, the same early stops, the same objectives, so the same chosen trial), on a real local Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from trainables.errors import UserError
from tuner.layout import tune_dir

pytestmark = pytest.mark.ray


def _decisions(table):
    """Per trial: its sampled parameters, status, epochs run and objectives (the table is sorted best first, so its
    first row is the chosen configuration); ids, paths and times differ between runs and are left out."""
    params = sorted(c for c in table.columns if c.startswith("param/"))
    return table[[*params, "status", "epochs", "best_epoch", "best_objective", "last_objective"]].reset_index(drop=True)


def test_a_deterministic_search_takes_the_same_decisions_twice(ray_cluster, make_experiment, tmp_path):
    tune = {
        "num_samples": 2,  # the second trial is the first that TPE models and ASHA compares at its rung
        "max_epochs": 2,
        "grace_period": 1,
        "reduction_factor": 2,
        "metric": "val/loss",  # continuous: ASHA can tell trials apart after one epoch
        "mode": "min",
        "tpe_startup_trials": 1,  # after the warm start, TPE models every trial
        "deterministic": True,
    }
    exps = [make_experiment(name, tune=tune, train={"workers_per_trial": 1}) for name in ("det_a", "det_b")]
    # both searches at once, as `skintune tune` drivers on the session cluster: they compete for the CPUs, so their
    # trials run at different speeds, which is what a deterministic search must not depend on
    logs = [open(tmp_path / f"{exp.name}.log", "w") for exp in exps]  # noqa: SIM115 - closed below
    drivers = [
        subprocess.Popen(
            [sys.executable, "-m", "tuner.cli", "tune", "--config", str(tmp_path / f"{exp.name}.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for exp, log in zip(exps, logs, strict=True)
    ]
    codes = [driver.wait(timeout=900) for driver in drivers]
    for log in logs:
        log.close()
    assert codes == [0, 0], [(tmp_path / f"{e.name}.log").read_text()[-2000:] for e in exps]
    runs = [_decisions(pd.read_parquet(Path(tune_dir(exp), "results.parquet"))) for exp in exps]
    assert len(runs[0]) == 2 and runs[0]["best_objective"].nunique() == 2  # two different configurations
    assert runs[0].equals(runs[1]), f"\n{runs[0]}\n{runs[1]}"  # the same ones, the same results, the same choice


def test_deterministic_with_concurrent_trials_is_refused(make_experiment):
    with pytest.raises(UserError, match="deterministic: true runs one trial at a time"):
        make_experiment("det_bad", tune={"deterministic": True, "max_concurrent_trials": 2})
