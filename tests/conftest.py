"""Session fixtures: one real Ray cluster (``ray start --head`` on loopback) and one tiny synthetic dataset,
shared by the slower tests."""

from __future__ import annotations

import contextlib
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

# Ray Train's controller polls its workers every 2 s by default, so each Train run (about 40 in the suite) starts,
# reports and ends up to 2 s late. Timing only: every process the tests start (Ray nodes, drivers, jobs) inherits
# this, and Train passes it on from a driver to its controller and workers.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# and each Train run starts a preemption watcher, one more actor process, which only acts when Ray Core drains a
# node (a spot instance's notice); no test drains one (a lost node is SIGKILLed: test_multinode.py)
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


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


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def descendants(pid: int) -> list[int]:
    """The ids of every live process below ``pid`` (read from /proc: children, their children...)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


OWN_TMPDIR = "<own>"  # as a node's TMPDIR: a folder in its own Ray temp dir (see _RayNode._start)


class _RayNode:
    """One node started with ``ray start --block`` on loopback: its own temp dir (short: Ray's socket paths have a
    length limit), free ports, log file; :meth:`stop` ends exactly this node (the blocking ``ray start`` shuts its
    processes down on SIGTERM), never anyone else's."""

    def _start(self, cmd: list[str], env: dict, cwd: str | None, new_session: bool) -> None:
        # on SIGTERM `ray start` first drains its node for up to 30 s (for Ray Serve's proxies): :meth:`stop` ends
        # the node at once instead
        env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        if env.get("TMPDIR") == OWN_TMPDIR:  # the node's other temp files go below its Ray temp dir too
            env["TMPDIR"] = str(Path(self.temp, "tmp"))
            Path(env["TMPDIR"]).mkdir()
        self.log = open(Path(self.temp, "ray-start.log"), "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=new_session
        )

    def _failed(self) -> RuntimeError:
        return RuntimeError(f"ray start failed, see {self.log.name}: {Path(self.log.name).read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the whole node at once, as a machine that dies: ``ray start`` (its own session), its raylet and
        every worker and agent below it, none of them told first."""
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # (again, if it was already asked: nothing changes)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


class LocalHead(_RayNode):
    """A real Ray head started with ``ray start --head --block`` on loopback, with its own auth token file (see
    _RayNode). ``env``: more environment for its processes; ``cwd``: where it runs."""

    def __init__(
        self,
        num_cpus: int = 3,
        env: dict | None = None,
        cwd: str | None = None,
        node_name: str | None = None,
        new_session: bool = False,
    ):
        self.temp = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")
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
        cmd = [_ray_cli(), "start", "--head", "--block", "--disable-usage-stats"]
        cmd += [f"{k}={v}" for k, v in ports.items()]
        cmd += [
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--num-cpus={num_cpus}",
            f"--temp-dir={self.temp}",
        ]
        cmd += [f"--node-name={node_name}"] if node_name else []
        env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        # a job's entrypoint runs `python` from the head's PATH: this environment's, as on a real head node
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.pop("RAY_AUTH_TOKEN", None)
        self._start(cmd, env, cwd, new_session)

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while not Path(self.temp, "ray_current_cluster").exists() or not self._dashboard_up():
            if self.proc.poll() is not None or time.time() > deadline:
                raise self._failed()
            time.sleep(0.5)

    def _dashboard_up(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2)
        except urllib.error.HTTPError:
            return True  # it answers (401 without a token)
        except OSError:
            return False
        return True


class LocalWorker(_RayNode):
    """A worker node joined to ``head`` with ``ray start --address=HEAD --block``: its own name, CPUs, temp dir
    (Ray allows one per node: a machine's own /tmp), ports and environment, in its own session, so that
    :meth:`kill` takes the node down like a machine that fails."""

    def __init__(self, head: LocalHead, name: str, num_cpus: int, env: dict | None = None, cwd: str | None = None):
        self.name = name
        self.temp = tempfile.mkdtemp(prefix=f"st-{name}-", dir="/tmp")
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        cmd = [_ray_cli(), "start", f"--address={head.gcs}", "--block", "--disable-usage-stats"]
        cmd += [f"{k}={v}" for k, v in ports.items()]
        cmd += [
            "--node-ip-address=127.0.0.1",
            f"--node-name={name}",
            f"--num-cpus={num_cpus}",
            f"--temp-dir={self.temp}",
        ]
        env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(head.token_path)}
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.pop("RAY_AUTH_TOKEN", None)
        self._start(cmd, env, cwd, new_session=True)


_RUNNING: dict[str, bool] = {}  # the session head or a multi-node cluster, whichever runs now


def _only_cluster(kind: str) -> None:
    """Two Ray clusters on one machine confuse each other (Ray's helper actors, e.g. Train's placement-group
    cleaner, find "the" cluster of this machine): refuse to start a second one."""
    other = next((k for k in _RUNNING if k != kind), None)
    if other is not None:
        raise RuntimeError(f"cannot start the {kind} while the {other} runs (see pytest_collection_modifyitems)")
    _RUNNING[kind] = True


@pytest.hookimpl(trylast=True)  # after any plugin that reorders
def pytest_collection_modifyitems(items):
    """Tests on the multi-node cluster (fixture ``ray_nodes``, module-scoped) run first, before any test has
    started the session head (``ray_head``: started on first use, stopped only when the session ends). Their
    module's cluster is stopped when its last test ends, so the two never run at once (see _only_cluster)."""
    first = [item for item in items if "ray_nodes" in getattr(item, "fixturenames", ())]
    if first:
        chosen = {id(item) for item in first}
        items[:] = first + [item for item in items if id(item) not in chosen]


class LocalCluster:
    """A head and worker nodes on this machine, each a ``ray start --block`` of its own, as separate machines run
    them. Each node has its own folders under ``base/<name>/``: ``home`` (its HOME), ``cache`` (its
    SKINTUNE_CACHE), ``cwd`` (where its ``ray start`` runs), and a TMPDIR in its own Ray temp dir. On one machine
    these stand in for each machine's own disk: the node-local cache (trainables/storage.py) is per machine, and
    the nodes of a real cluster never share it; here, without its own SKINTUNE_CACHE, every node would use the
    same ~/.cache/skintune. ``env``: per node, more environment (e.g. its S3 endpoint)."""

    def __init__(self, base: Path, head_cpus: int, workers: dict[str, int], env: dict[str, dict]):
        _only_cluster("multi-node cluster")
        self.base = base
        try:
            self.head = LocalHead(head_cpus, self._env("head", env), self.folder("head", "cwd"), "head", True)
            self.head.wait()
            self.workers = {
                name: LocalWorker(self.head, name, cpus, self._env(name, env), self.folder(name, "cwd"))
                for name, cpus in workers.items()
            }
        except BaseException:
            self.stop()
            raise

    def _env(self, name: str, env: dict[str, dict]) -> dict:
        for sub in ("home", "cache", "cwd"):
            self.folder(name, sub).mkdir(parents=True)
        home, cache = self.folder(name, "home"), self.folder(name, "cache")
        return {"HOME": str(home), "SKINTUNE_CACHE": str(cache), "TMPDIR": OWN_TMPDIR, **env.get(name, {})}

    def folder(self, node: str, kind: str) -> Path:
        return self.base / node / kind

    @property
    def dashboard(self) -> str:
        return self.head.dashboard

    def nodes(self) -> dict[str, str]:
        """Node name -> Ray node id of the nodes alive now (Ray's State API, through the dashboard)."""
        from ray.util.state import list_nodes

        return {n.node_name: n.node_id for n in list_nodes(address=self.dashboard) if n.state == "ALIVE"}

    def wait(self, timeout: float = 180.0) -> None:
        """Until every node has joined."""
        deadline = time.time() + timeout
        while set(self.nodes()) != {"head", *self.workers}:
            for node in self.workers.values():
                if node.proc.poll() is not None or time.time() > deadline:
                    raise node._failed()
            time.sleep(1)

    def stop(self) -> None:
        nodes = [n for n in [*getattr(self, "workers", {}).values(), getattr(self, "head", None)] if n is not None]
        for node in nodes:  # all at once: each takes a while to shut down
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in nodes:
            node.stop()
        _RUNNING.pop("multi-node cluster", None)


@pytest.fixture(scope="session")
def local_cluster():
    """The LocalCluster class, for a module's own multi-node cluster (test modules cannot import conftest)."""
    return LocalCluster


@pytest.fixture(scope="session")
def ray_head():
    """The session's one Ray cluster (see LocalHead); the environment points Ray clients at it and its token."""
    # Token auth on, token in the temp dir. The head gets no PYTHONPATH or other help a user's cluster lacks: it
    # finds skintune as installed in its environment (`make` installs the project into .venv, as cluster.yaml's
    # `pip install` does on the nodes), and jobs find it in their uploaded working directory.
    os.environ.pop("PYTHONPATH", None)
    os.environ["RAY_AUTH_MODE"] = "token"
    _only_cluster("session head")
    try:
        head = LocalHead()
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(head.token_path)
        os.environ.pop("RAY_AUTH_TOKEN", None)
        try:
            head.wait()
            yield head
        finally:
            head.stop()
    finally:
        _RUNNING.pop("session head", None)


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


def _experiment_maker(base: Path, smoke_data: tuple[str, str]):
    """make(name, **overrides) -> ExperimentConfig from experiments/smoke.yaml with overrides, the YAML and the
    storage under ``base``."""
    from tuner.config import load_experiment

    def make(name: str = "smoke", **overrides):
        raw = yaml.safe_load(SMOKE_YAML.read_text())
        raw["data"].pop("synth")
        raw["data"].update(root=smoke_data[0], prepared=smoke_data[1])
        raw = deep_merge(raw, {"name": name, "storage": str(base / "results"), **overrides})
        path = base / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_experiment(path)

    return make


@pytest.fixture
def make_experiment(tmp_path, smoke_data):
    """Build an ExperimentConfig from experiments/smoke.yaml with overrides, storage under tmp_path."""
    return _experiment_maker(tmp_path, smoke_data)


@pytest.fixture(scope="module")
def make_module_experiment(tmp_path_factory, smoke_data):
    """make_experiment for module-scoped fixtures (one run shared by several tests): storage under one temp folder
    per module."""
    return _experiment_maker(tmp_path_factory.mktemp("module-experiments"), smoke_data)
