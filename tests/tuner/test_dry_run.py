"""``skintune tune --dry-run``: every shipped experiment is valid and its plan prints without Ray starting or any
data being prepared; a bad experiment is one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuner.cli import main
from tuner.config import load_experiment
from tuner.plan import asha_rungs

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))

# Runs each shipped experiment's dry run in a fresh interpreter, then says whether Ray was initialised there.
_DRY_RUNS = """
import contextlib, io, json, sys
import ray
from tuner.cli import main
runs = {}
for path in sys.argv[2:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["tune", "--config", path, "--dry-run", "--storage", sys.argv[1]])
    runs[path] = [rc, out.getvalue()]
print(json.dumps({"runs": runs, "ray_initialized": ray.is_initialized()}))
"""


def test_the_real_data_experiments_ship():
    names = {p.name for p in SHIPPED}
    assert {"isic2019.yaml", "ham10000.yaml", "demo.yaml", "smoke.yaml"} <= names
    isic = load_experiment(ROOT / "experiments" / "isic2019.yaml")
    assert isic.data.format == "isic2019" and isic.data.image_size == 224 and isic.search_space == "mtl"
    assert isic.train.workers_per_trial == 2 and isic.train.use_gpu is True and isic.retrain.seeds == 5
    assert isic.tune.max_trial_epochs and isic.tune.max_trial_epochs < isic.tune.num_samples * isic.tune.max_epochs
    ham = load_experiment(ROOT / "experiments" / "ham10000.yaml")
    assert ham.data.format == "ham10000" and ham.data.options == {"harmonize_sites": True}


def test_dry_run_of_every_shipped_experiment_prints_the_plan_and_starts_nothing(tmp_path):
    storage, ray_tmp, cwd = tmp_path / "results", tmp_path / "ray", tmp_path / "cwd"
    ray_tmp.mkdir()
    cwd.mkdir()  # demo and smoke name relative data roots: nothing may be synthesised there
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
    proc = subprocess.run(
        [sys.executable, "-c", _DRY_RUNS, str(storage), *map(str, SHIPPED)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ray_initialized"] is False
    assert not list(ray_tmp.iterdir()), "a Ray session was started"
    assert not storage.exists() and not list(cwd.iterdir()), "the dry run wrote something"

    for path in SHIPPED:
        rc, text = report["runs"][str(path)]
        assert rc == 0, text
        exp = load_experiment(path, storage=str(storage))
        t = exp.tune
        lines = text.splitlines()
        assert lines[0].startswith(f"plan of experiment {exp.name!r}") and "nothing started" in lines[0]
        for label in ("search space", "trials", "epochs", "budget", "per trial", "concurrency", "data", "results"):
            assert any(line.startswith(f"  {label} ") for line in lines), (label, text)
        assert f"  trials        {t.num_samples}, {t.sampler.upper()}" in text
        assert f"up to {t.max_epochs} a trial" in text
        assert f"to {t.num_samples * t.max_epochs} trial-epochs" in text
        assert f"{exp.train.workers_per_trial} DDP worker" in text
        assert f"results       {exp.experiment_dir}:" in text
        if t.max_trial_epochs:
            assert f"the search ends at {t.max_trial_epochs} (tune.max_trial_epochs)" in text
        root_warning = f"warning: data root {exp.data.root} not found on this machine"
        # synthetic experiments generate their root; the real-data roots do not exist on this machine
        assert (root_warning in text) == (exp.data.synth is None and not Path(exp.data.root).is_dir()), text

    isic = report["runs"][str(ROOT / "experiments" / "isic2019.yaml")][1]
    assert "compares trials at epoch 2, 6, 18" in isic and "warning: data root /mnt/shared/isic2019" in isic


def test_dry_run_counts_concurrency_on_a_cluster_file(capsys):
    from tuner.layout import max_concurrent

    config = ROOT / "experiments" / "isic2019.yaml"
    assert main(["tune", "--config", str(config), "--dry-run", "--cluster", str(ROOT / "cluster.yaml")]) == 0
    text = capsys.readouterr().out
    # cluster.yaml at its largest: an 8-CPU head and 8 workers of 4 CPU + 1 GPU
    expected = max_concurrent(load_experiment(config), {"CPU": 8 + 8 * 4, "GPU": 8}, True)
    assert expected == 4  # 2 GPUs a trial
    assert f"concurrency   {expected} trials at once on cluster.yaml at its largest" in text
    assert "8 x ray.worker.gpu" in text and "no node type" not in text


def test_dry_run_warns_when_no_node_holds_a_worker_or_the_experiment_exists(tmp_path, capsys):
    data = yaml.safe_load((ROOT / "experiments" / "isic2019.yaml").read_text())
    data["train"]["cpus_per_worker"] = 6  # more than a g5.xlarge's 4 vCPUs
    config = tmp_path / "big.yaml"
    config.write_text(yaml.safe_dump(data))
    storage = tmp_path / "results"
    (storage / data["name"] / "tune").mkdir(parents=True)
    argv = ["tune", "--config", str(config), "--dry-run", "--storage", str(storage)]
    assert main([*argv, "--cluster", str(ROOT / "cluster.yaml")]) == 0
    text = capsys.readouterr().out
    assert "warning: no node type of" in text and "trials would never start" in text
    assert f"warning: experiment {data['name']!r} exists at {storage / data['name']}" in text and "--resume" in text
    assert main([*argv, "--resume"]) == 0
    assert "exists at" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: x\ndata: {root: d\n", "not valid YAML"),
        (
            "name: x\ndata: {root: d}\ntune: {num_sample: 4}\n",
            "tune.num_sample: unknown key (did you mean 'num_samples'?)",
        ),
        ("name: x\ndata: {root: d}\nsearch_space: mtll\n", "search space 'mtll'"),
        ("name: x\ndata: {root: d, format: isic2018}\n", "unknown dataset format 'isic2018'"),
        (
            "name: x\ndata: {root: d, format: ham10000, options: {harmonize_site: true}}\n",
            "unknown option(s) 'harmonize_site'",
        ),
        ("name: x\ndata: {root: d}\ntune: {max_epochs: 2, grace_period: 3}\n", "grace_period (3) must not exceed"),
    ],
)
def test_a_bad_experiment_is_one_line_and_exit_2(tmp_path, capsys, text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["tune", "--config", str(config), "--dry-run", "--storage", str(tmp_path / "r")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("skintune: error: ") and "\n" not in err and expected in err, err
    assert not captured.out  # no plan
    assert not (tmp_path / "r").exists()


def test_cluster_without_dry_run_is_refused(capsys):
    argv = ["tune", "--config", str(ROOT / "experiments" / "smoke.yaml"), "--cluster", str(ROOT / "cluster.yaml")]
    assert main(argv) == 2
    assert "--cluster FILE only plans (--dry-run)" in capsys.readouterr().err


@pytest.mark.parametrize("max_t, grace, rf", [(20, 2, 3), (4, 1, 2), (27, 1, 3), (24, 3, 2), (10, 10, 3)])
def test_asha_rungs_are_the_epochs_ray_asha_compares_at(max_t, grace, rf):
    from ray.tune.schedulers import ASHAScheduler

    # Ray keeps them privately (one bracket, its rungs); checked here so the plan follows a Ray that changes them
    ray_rungs = ASHAScheduler(max_t=max_t, grace_period=grace, reduction_factor=rf)._brackets[0]._rungs
    assert asha_rungs(max_t, grace, rf) == sorted(int(milestone) for milestone, _ in ray_rungs)


def test_demo_arms_all_plans_the_four_arm_comparison_and_is_documented(tmp_path, capsys):
    storage = tmp_path / "results"
    assert main(["demo", "--dry-run", "--arms", "all", "--storage", str(storage)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("plan of experiment 'demo-arms'") and "--arms all" in text.splitlines()[0]
    assert "retrain       3 seeds of each of 4 arms (mtl, meta, mtl_meta, single_task)" in text
    assert f"results       {storage / 'demo-arms'}:" in text and not storage.exists()
    assert main(["demo", "--dry-run", "--storage", str(storage)]) == 0  # the default demo stays two-arm
    text = capsys.readouterr().out
    assert text.startswith("plan of experiment 'demo'") and "of the best configuration and of the single-task" in text
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--arms all" in capsys.readouterr().out.replace("\n", " ")
