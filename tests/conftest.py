"""Session fixtures: one real Ray cluster (``ray start --head`` on loopback) and one tiny synthetic dataset,
shared by the slower tests."""

from __future__ import annotations

import copy
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(name="free_port")
def free_port_fixture():
    """A function returning a free loopback port."""
    return free_port


def sigkill_when(cmd: list[str], ready, what: str, timeout: float, poll: float, **popen) -> subprocess.Popen:
    """Start ``cmd`` (output discarded), SIGKILL it as soon as ``ready()`` holds, and reap it. Fails when it ends
    before that or ``timeout`` seconds pass. ``popen``: more Popen arguments (e.g. start_new_session)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None and time.time() < deadline, f"{what} ended before it could be killed"
            time.sleep(poll)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return proc


@pytest.fixture(name="sigkill_when")
def sigkill_when_fixture():
    """A function: run a command and SIGKILL it once a condition holds (see :func:`sigkill_when`)."""
    return sigkill_when


class LocalHead:
    """A real one-node Ray cluster started with ``ray start --head --block`` on loopback: its own temp dir, free
    ports and its own auth token file; :meth:`stop` ends exactly this cluster (the blocking ``ray start`` shuts
    its processes down on SIGTERM), never anyone else's."""

    def __init__(self, num_cpus: int = 3):
        self.temp = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.token_path = Path(self.temp, "auth_token")
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        ports = {
            "--port": self.gcs.rsplit(":", 1)[1],
            "--dashboard-port": self.dashboard.rsplit(":", 1)[1],
            "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--disable-usage-stats"]
        cmd += [f"{k}={v}" for k, v in ports.items()]
        cmd += [
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--num-cpus={num_cpus}",
            f"--temp-dir={self.temp}",
        ]
        self.log = open(Path(self.temp, "ray-start.log"), "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        # a job's entrypoint runs `python` from the head's PATH: this environment's, as on a real head node
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.pop("RAY_AUTH_TOKEN", None)
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while not Path(self.temp, "ray_current_cluster").exists() or not self._dashboard_up():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start failed, see {self.log.name}: {Path(self.log.name).read_text()[-2000:]}")
            time.sleep(0.5)

    def _dashboard_up(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2)
        except urllib.error.HTTPError:
            return True  # it answers (401 without a token)
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head():
    """The session's one Ray cluster (see LocalHead); the environment points Ray clients at it and its token."""
    # Token auth on, token in the temp dir. The head gets no PYTHONPATH or other help a user's cluster lacks: it
    # finds skintune as installed in its environment (`make` installs the project into .venv, as cluster.yaml's
    # `pip install` does on the nodes), and jobs find it in their uploaded working directory.
    os.environ.pop("PYTHONPATH", None)
    os.environ["RAY_AUTH_MODE"] = "token"
    head = LocalHead()
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(head.token_path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    try:
        head.wait()
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This process joined to the session cluster (dashboard on 127.0.0.1, needed by early stopping)."""
    import ray

    os.environ["RAY_ADDRESS"] = ray_head.gcs  # subprocess drivers join it too
    # Ray caches the auth mode and token at first use (e.g. while tests were collected): read them again
    ray._raylet.Config.initialize("")
    ray._raylet.AuthenticationTokenLoader.instance().reset_cache()
    ray.init(
        address=ray_head.gcs,
        # Train's placement-group cleaner must find this cluster (see tuner/ray_runtime.py)
        # PYTHONPATH for this driver's workers only (not the head's, not submitted jobs'): tests pass worker
        # functions defined in test modules (e.g. test_train_loop._ddp_probe), which workers import by name
        runtime_env={
            "env_vars": {
                "RAY_ADDRESS": ray_head.gcs,
                "PYTHONWARNINGS": "ignore::DeprecationWarning",
                "PYTHONPATH": str(ROOT),
            }
        },
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield ray_head.gcs
    ray.shutdown()


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
