"""The resource arithmetic of a search (tuner/layout.py): how many trials a cluster holds at once, with whole or
fractional GPUs per Train worker (``train.gpus_per_worker``), and what each worker asks Ray for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trainables.errors import UserError
from tuner.cli import main
from tuner.config import ExperimentConfig, load_experiment
from tuner.layout import gpu_worker_slots, max_concurrent, search_concurrency, worker_resources

ROOT = Path(__file__).resolve().parents[2]


def _exp(**train) -> ExperimentConfig:
    return ExperimentConfig(name="x", data={"format": "isic2019", "root": "/data"}, train=train)


@pytest.mark.parametrize(
    ("gpus", "share", "slots"),
    [
        (1, 1.0, 1),
        (1, 0.5, 2),
        (1, 0.25, 4),
        (1, 0.3, 3),  # 3 x 0.3 on one GPU; a fourth would straddle two GPUs
        (2, 0.3, 6),
        (1, 0.1, 10),  # 1 / 0.1 is 9.999...: counted as 10, as Ray does (resources in units of 1e-4)
        (8, 0.25, 32),
        (8, 2.0, 4),
        (3, 2.0, 1),
        (0, 0.25, 0),
        (1.5, 0.5, 2),  # a half-free GPU reported by Ray is no GPU for a packing of whole GPUs
    ],
)
def test_gpu_worker_slots(gpus, share, slots):
    assert gpu_worker_slots(gpus, share) == slots


@pytest.mark.parametrize(
    ("train", "resources", "trials"),
    [
        ({"workers_per_trial": 1, "gpus_per_worker": 1}, {"CPU": 64, "GPU": 1}, 1),
        ({"workers_per_trial": 1, "gpus_per_worker": 0.5}, {"CPU": 64, "GPU": 1}, 2),
        ({"workers_per_trial": 1, "gpus_per_worker": 0.25}, {"CPU": 64, "GPU": 1}, 4),
        ({"workers_per_trial": 1, "gpus_per_worker": 0.25}, {"CPU": 64, "GPU": 8}, 32),
        ({"workers_per_trial": 2, "gpus_per_worker": 1}, {"CPU": 64, "GPU": 8}, 4),
        ({"workers_per_trial": 2, "gpus_per_worker": 2}, {"CPU": 64, "GPU": 8}, 2),
        # the CPUs bound it: 4 trials of 1 worker x 4 CPU + 0.25 for the driver need 17 CPUs
        ({"workers_per_trial": 1, "gpus_per_worker": 0.25, "cpus_per_worker": 4}, {"CPU": 16, "GPU": 1}, 3),
        ({"workers_per_trial": 1, "gpus_per_worker": 0.25, "cpus_per_worker": 4}, {"CPU": 17, "GPU": 1}, 4),
    ],
)
def test_concurrency_follows_the_gpu_share(train, resources, trials):
    exp = _exp(**train)
    assert max_concurrent(exp, resources, use_gpu=True) == trials
    assert search_concurrency(exp, resources, use_gpu=True) == trials
    # on CPUs the GPU share plays no part
    assert max_concurrent(exp, resources, use_gpu=False) == resources["CPU"] // (
        train["workers_per_trial"] * train.get("cpus_per_worker", 1.0) + 0.25
    )


def test_explicit_and_deterministic_concurrency_win():
    exp = _exp(workers_per_trial=1, gpus_per_worker=0.25)
    exp.tune.max_concurrent_trials = 3
    assert max_concurrent(exp, {"CPU": 64, "GPU": 1}, True) == 3
    exp = _exp(workers_per_trial=1, gpus_per_worker=0.25)
    exp.tune.deterministic = True
    assert search_concurrency(exp, {"CPU": 64, "GPU": 1}, True) == 1


def test_worker_resources_ask_for_the_share():
    exp = _exp(workers_per_trial=1, gpus_per_worker=0.25, cpus_per_worker=3)
    assert worker_resources(exp, use_gpu=True) == {"CPU": 3.0, "GPU": 0.25}
    assert worker_resources(exp, use_gpu=False) == {"CPU": 3.0}
    assert worker_resources(_exp(), use_gpu=True) == {"CPU": 1.0, "GPU": 1.0}  # the default: one GPU a worker
    assert "gpus_per_worker" not in _exp(gpus_per_worker=0.5, workers_per_trial=1).train.train_config()


def _write(tmp_path: Path, **train) -> Path:
    data = {"name": "x", "data": {"format": "isic2019", "root": str(tmp_path)}, "train": train}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("share", [0.25, 0.5, 1, 1.0, 2, 4, 0.0001])
def test_valid_gpu_shares(tmp_path, share):
    assert load_experiment(_write(tmp_path, gpus_per_worker=share, workers_per_trial=1)).train.gpus_per_worker == share


@pytest.mark.parametrize("share", [0, -0.5, 1.5, 2.5, 0.33333, "lots"])
def test_invalid_gpu_shares_are_one_clear_line(tmp_path, share):
    path = _write(tmp_path, gpus_per_worker=share, workers_per_trial=1)
    with pytest.raises(UserError) as err:
        load_experiment(path)
    message = str(err.value)
    assert message.startswith(f"{path}: train.gpus_per_worker: ") and "\n" not in message
    if not isinstance(share, str):
        assert "fraction of one GPU in (0, 1]" in message and "whole number" in message


def test_fractional_gpus_refuse_ddp_workers(tmp_path, capsys):
    path = _write(tmp_path, gpus_per_worker=0.5, workers_per_trial=2)
    with pytest.raises(UserError, match="train: .*set workers_per_trial: 1, or gpus_per_worker: 1"):
        load_experiment(path)
    assert main(["tune", "--config", str(path), "--dry-run"]) == 2  # the CLI's exit code for bad input
    assert "workers_per_trial" in capsys.readouterr().err
    # on CPUs only, the share is not used: no reason to refuse
    assert load_experiment(_write(tmp_path, gpus_per_worker=0.5, workers_per_trial=2, use_gpu=False))


def test_dry_run_plans_packed_trials_on_the_cluster_file(tmp_path, capsys):
    data = yaml.safe_load((ROOT / "experiments" / "isic2019.yaml").read_text())
    data["train"].update(workers_per_trial=1, gpus_per_worker=0.25, cpus_per_worker=1)
    config = tmp_path / "packed.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["tune", "--config", str(config), "--dry-run", "--cluster", str(ROOT / "cluster.yaml")]) == 0
    text = capsys.readouterr().out
    # cluster.yaml at its largest: an 8-CPU head and 8 workers of 4 CPU + 1 GPU: 32 quarter-GPU workers, and
    # 40 CPUs hold 32 trials of 1.25 CPU
    assert "1 DDP worker x (1 CPU + 0.25 GPU) + 0.25 CPU for its driver" in text
    assert "concurrency   32 trials at once on cluster.yaml at its largest" in text
    assert "no node type" not in text
