"""Session fixtures: one real local Ray cluster and one tiny synthetic dataset, shared by the slower tests."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE_YAML = ROOT / "experiments" / "smoke.yaml"


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray (dashboard on 127.0.0.1, needed by early stopping), own temp dir, stopped at the end."""
    import ray

    # Ray workers must import test modules that define worker functions.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    temp = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(
        num_cpus=3,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _temp_dir=temp,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> tuple[str, str]:
    """(raw root, prepared dir) of the smoke experiment's synthetic data, made once per session."""
    from tuner.config import load_experiment
    from tuner.data_step import ensure_data

    base = tmp_path_factory.mktemp("smoke-data")
    raw = yaml.safe_load(SMOKE_YAML.read_text())
    raw["data"].update(root=str(base / "raw"), prepared=str(base / "prepared"))
    path = base / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    exp = load_experiment(path)
    return exp.data.root, ensure_data(exp, progress=False)


@pytest.fixture
def make_experiment(tmp_path, smoke_data):
    """Build an ExperimentConfig from experiments/smoke.yaml with overrides, storage under tmp_path."""
    from tuner.config import load_experiment

    def make(name: str = "smoke", **overrides):
        raw = yaml.safe_load(SMOKE_YAML.read_text())
        raw["data"].pop("synth")
        raw["data"].update(root=smoke_data[0], prepared=smoke_data[1])
        raw = deep_merge(raw, {"name": name, "storage": str(tmp_path / "results"), **overrides})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_experiment(path)

    return make
