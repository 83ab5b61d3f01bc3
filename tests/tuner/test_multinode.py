"""Several nodes on this machine, as a user's cluster has them: a head and two worker nodes, each a `ray start
--block` of its own (its own CPUs, ports, Ray temp dir, TMPDIR, HOME, node-local cache and S3 endpoint), results on
a real S3 API (moto's server mode, on loopback), tuning submitted with `skintune submit` from a separate process.

Placement: the head has 1 CPU, enough for the trials' drivers (0.25 each) and never for a Train worker (1.5 CPU
here); a worker node has 2 CPUs, room for one Train worker (plus drivers), never two. Two trials at once therefore
train on both worker nodes. Each node reaches the one S3 through its own port, so the request log says which node
read or wrote what. (Not through credentials: Ray Tune copies the driver's AWS_* credentials into every trial's
environment, tune/execution/class_cache.py, so every trial on every node uses the head's.)

These tests run first in a session (tests/conftest.py, pytest_collection_modifyitems): their module's cluster is
stopped before the session's one-node cluster starts; two Ray clusters on one machine confuse each other."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
WORKERS = {"w1": 2, "w2": 2}  # worker node -> CPUs
CPUS_PER_WORKER = 1.5  # a worker node holds one Train worker, the head (1 CPU) none


# -- S3 with a request log --------------------------------------------------------------------------------------
class RecordingS3:
    """One S3 (moto's server app, one backend) served on one loopback port per client (as its ThreadedMotoServer
    serves it), logging each request's method, path and client: which node read or wrote what."""

    def __init__(self, clients: list[str]):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)
        self.requests: list[tuple[str, str, str]] = []  # (method, path, client)
        self.endpoints: dict[str, str] = {}
        self._lock = threading.Lock()
        self._servers = []
        for client in clients:

            def recording(environ, start_response, client=client):
                with self._lock:
                    self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), client))
                return app(environ, start_response)

            server = make_server("127.0.0.1", 0, recording, threaded=True, request_handler=MotoRequestHandler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
            self.endpoints[client] = f"http://127.0.0.1:{server.server_port}"

    def env(self, client: str) -> dict:
        """What points pyarrow (and so Ray Train, Tune and skintune) at this S3, as ``client``."""
        return {
            "AWS_ENDPOINT_URL": self.endpoints[client],
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def log(self, start: int = 0) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self.requests[start:])

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()


@pytest.fixture(scope="module")
def ray_nodes(local_cluster, tmp_path_factory):
    """The module's cluster: head + w1 + w2 (tests/conftest.py, LocalCluster), each node with its own S3 endpoint;
    this process reads S3 as "tester" and talks to the cluster's State API with its token."""
    import boto3
    import ray

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # (the request log is kept, not printed)
    s3 = RecordingS3(["tester", "head", *WORKERS])
    boto3.client("s3", **_boto(s3.env("tester"))).create_bucket(Bucket="lab")
    nodes = {name: s3.env(name) for name in ("head", *WORKERS)}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PYTHONPATH", raising=False)  # no help a user's nodes lack
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            mp.delenv(key, raising=False)
        cluster = local_cluster(tmp_path_factory.mktemp("nodes"), 1, WORKERS, nodes)
        try:
            for key, value in {**s3.env("tester"), "RAY_AUTH_MODE": "token"}.items():
                mp.setenv(key, value)
            mp.setenv("RAY_AUTH_TOKEN_PATH", str(cluster.head.token_path))
            ray._raylet.Config.initialize("")  # Ray caches the auth mode and token at first use: read them again
            ray._raylet.AuthenticationTokenLoader.instance().reset_cache()
            cluster.wait()
            cluster.s3 = s3
            yield cluster
        finally:
            cluster.stop()
            s3.stop()


def _boto(env: dict) -> dict:
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


# -- a user's steps ----------------------------------------------------------------------------------------------
def _experiment(tmp_path: Path, smoke_data, name: str, tune: dict, train: dict) -> Path:
    """A smoke experiment YAML: raw images read by the job on the head (this machine's folder stands in for the
    cluster's shared file system), prepared into the S3 storage by the job."""
    raw = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    raw["data"].pop("synth")
    raw["data"]["root"] = smoke_data[0]
    raw["name"] = name
    raw["tune"].update(tune)
    raw["train"].update({"workers_per_trial": 1, "cpus_per_worker": CPUS_PER_WORKER, **train})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _client_env(cluster, tmp_path: Path) -> dict:
    """`skintune submit` as a user runs it: the cluster's token, its own HOME and TMPDIR (checked afterwards); no
    cloud credentials (the nodes have their own) and no Ray address but --address."""
    home, tmp = tmp_path / "client-home", tmp_path / "client-tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    return {**env, "HOME": str(home), "TMPDIR": str(tmp), "RAY_AUTH_TOKEN_PATH": str(cluster.head.token_path)}


def _submit(cluster, env: dict, config: Path, storage: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tuner.cli", "submit", "--address", cluster.dashboard, "--"]
    cmd += ["tune", "--config", str(config), "--storage", storage]
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _finished(job: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    try:
        job.wait(timeout=timeout)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)
    text = log.read_text()
    assert job.returncode == 0 and "SUCCEEDED" in text, text[-4000:]
    return text


def _repo_files() -> set[str]:
    """Untracked and ignored paths of the checkout (tracked files are others' to edit), bytecode caches aside."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    return {line[3:] for line in out.splitlines() if line[:2] in ("??", "!!") and "__pycache__" not in line.split("/")}


# -- reading the request log -------------------------------------------------------------------------------------
def _object(path: str) -> str:
    """The object key of a request path (/lab/KEY), '' for bucket-level requests."""
    return path.split("/", 2)[2] if path.count("/") >= 2 else ""


def _trial_nodes(requests, prefix: str) -> dict[str, list[str]]:
    """Per trial id, the worker nodes that uploaded its rank-0 worker's TensorBoard events, in order. (skintune's
    own uploads from a worker go through that node's endpoint; Ray Train's checkpoint uploads go through the
    storage filesystem that Ray pickles from the trial's driver to its workers, so they cannot tell nodes apart.)"""
    out: dict[str, list[str]] = {}
    for method, path, key in requests:
        parts = _object(path)[len(prefix) :].split("/")
        events = len(parts) == 3 and parts[1].startswith("trial_driver_") and parts[2].startswith("events.out.")
        if method in ("PUT", "POST") and key in WORKERS and events and parts[0] == "tune":
            trial = parts[1].split("_")[2]
            if not out.get(trial) or out[trial][-1] != key:
                out.setdefault(trial, []).append(key)
    return out


def _steps_by_file(trial: Path, tag: str) -> list[list[int]]:
    """The steps of ``tag`` in each event file of the trial (one file per start of the rank-0 worker); the same
    check as tests/tuner/test_faults.py."""
    out = []
    for path in sorted(trial.glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3])):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out.append([e.step for e in acc.Scalars(tag)])
    return out


def _check_each_epoch_once(folder: Path, epochs: int, trials: int) -> list[Path]:
    """The experiment as downloaded to ``folder``: ``trials`` trials, each finished once, each epoch once in
    progress.csv and in TensorBoard (the fault checks of tests/tuner/test_faults.py, read from a copy)."""
    table = pd.read_parquet(folder / "tune" / "results.parquet")
    assert len(table) == trials and (table["status"] == "completed").all() and (table["epochs"] == epochs).all()
    dirs = sorted(p for p in (folder / "tune").glob("trial_driver_*") if p.is_dir())
    assert len(dirs) == trials, [p.name for p in dirs]  # no trial started twice
    for trial in dirs:
        rows = pd.read_csv(trial / "progress.csv")
        assert rows["epoch"].astype(int).tolist() == list(range(1, epochs + 1)), (trial.name, rows["epoch"])
        acc = EventAccumulator(str(trial), size_guidance={"scalars": 0})
        acc.Reload()
        assert sorted(e.step for e in acc.Scalars("val/lesion_bacc")) == list(range(1, epochs + 1)), trial.name
        tune_steps = [e.step for e in acc.Scalars("ray/tune/epoch")]
        assert sorted(tune_steps) == list(range(1, epochs + 1)), (trial.name, tune_steps)
    return dirs


# -- the tests ---------------------------------------------------------------------------------------------------
def test_a_search_trains_on_both_worker_nodes_fetches_the_data_once_per_node_and_writes_nothing_elsewhere(
    ray_nodes, smoke_data, tmp_path
):
    from ray.util.state import list_actors

    from trainables import storage as st

    cluster, s3 = ray_nodes, ray_nodes.s3
    repo_before = _repo_files()
    # two trials: the cluster holds two at once, one Train worker on each worker node
    config = _experiment(tmp_path, smoke_data, "spread", {"num_samples": 2, "max_epochs": 2}, {})
    storage, prefix = "s3://lab/multi", "multi/spread/"
    start = len(s3.log())
    text = _finished(
        _submit(cluster, _client_env(cluster, tmp_path), config, storage, tmp_path / "job.log"), tmp_path / "job.log"
    )
    assert "tune: 2 trials" in text
    requests = s3.log(start)

    # the trials trained on both worker nodes, as the S3 log and Ray's own record of the Train workers say
    nodes = _trial_nodes(requests, prefix)
    assert len(nodes) == 2 and all(len(n) == 1 for n in nodes.values()), nodes  # each trial on one node
    assert {n[0] for n in nodes.values()} == set(WORKERS), nodes
    names = {node_id: name for name, node_id in cluster.nodes().items()}
    actors = list_actors(address=cluster.dashboard, filters=[("class_name", "=", "RayTrainWorker")], limit=1000)
    assert len(actors) >= 2 and {names[a.node_id] for a in actors} == set(WORKERS), actors  # none on the head

    # the prepared data: written by the job on the head, fetched once by each worker node into its own cache
    prepared = sorted(o for o in {_object(p) for _, p, _ in requests} if o.startswith(f"{prefix}prepared/"))
    files = [o for o in prepared if o.endswith((".parquet", "dataset.json"))]
    assert any(o.endswith(".parquet") for o in files) and f"{prefix}prepared/dataset.json" in files
    sizes = {o: len(st.read_bytes(f"s3://lab/{o}")) for o in files}
    assert max(sizes.values()) < 1 << 20  # one GET reads a file whole (pyarrow reads 1 MiB ranges)
    for node in WORKERS:
        gets = [_object(p) for m, p, k in requests if m == "GET" and k == node and _object(p) in sizes]
        assert sorted(gets) == sorted(sizes), (node, gets)  # every prepared file, once
        (copy,) = (cluster.folder(node, "cache") / "remote").iterdir()  # one cached copy, no temp left over
        assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == sorted(
            o[len(f"{prefix}prepared/") :] for o in files
        )
    head_reads = [_object(p) for m, p, k in requests if m == "GET" and k == "head" and _object(p).endswith(".parquet")]
    assert not head_reads and not (cluster.folder("head", "cache") / "remote").exists()

    # nothing written outside the storage URI, the node caches and the temp dirs
    writes = {(k, _object(p)) for m, p, k in requests if m in ("PUT", "POST", "DELETE")}
    outside = sorted(o for _, o in writes if not o.startswith(prefix) and o != "multi/")  # (the storage's folder)
    assert writes and not outside, outside
    assert {k for k, _ in writes} <= {"head", *WORKERS}
    for node in ("head", *WORKERS):
        assert not any(cluster.folder(node, "cwd").iterdir()), node
        home = cluster.folder(node, "home")
        # only matplotlib's own font cache (a worker draws the confusion matrix for TensorBoard): nothing of ours
        found = {str(p.relative_to(home)) for p in home.rglob("*")}
        assert found <= {".cache", ".config"} | {p for p in found if p.split("/")[1:2] == ["matplotlib"]}, found
    assert not any((tmp_path / "client-home").iterdir())
    assert not _repo_files() - repo_before, _repo_files() - repo_before  # nothing new in the checkout

    # the results table (ASHA may have stopped trials: each epoch once is checked in the node-loss test)
    table = pd.read_parquet(io.BytesIO(st.read_bytes(f"{storage}/spread/tune/results.parquet")))
    assert len(table) == 2 and set(table["trial_id"]) == set(nodes)


def _durable_epoch(storage: str, trial: str) -> int | None:
    """The epoch of the last checkpoint the trial's Train run has registered (what a restart resumes from)."""
    from trainables import storage as st

    path = f"{storage}/lost/tune/runs/{trial}/checkpoint_manager_snapshot.json"
    try:
        return int(json.loads(st.read_text(path))["latest_checkpoint_result"]["metrics"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def test_a_worker_node_lost_mid_trial_the_trial_continues_on_the_other_node_from_its_checkpoint(
    ray_nodes, smoke_data, tmp_path
):
    from trainables import storage as st

    cluster, s3 = ray_nodes, ray_nodes.s3
    epochs = 3
    # 160 px crops of the 48 px smoke images: epochs of a few seconds, so that the kill lands inside one
    config = _experiment(
        tmp_path,
        smoke_data,
        "lost",
        {"num_samples": 1, "max_epochs": epochs, "scheduler": "none"},  # one trial: the other node is free for it
        {"image_size": 160, "epochs": epochs},
    )
    storage, prefix = "s3://lab/multi", "multi/lost/"
    log = tmp_path / "job.log"
    start = len(s3.log())
    job = _submit(cluster, _client_env(cluster, tmp_path), config, storage, log)
    killed = None
    try:
        deadline = time.time() + 300
        while killed is None:
            assert job.poll() is None and time.time() < deadline, log.read_text()[-4000:]
            for trial, where in _trial_nodes(s3.log(start), prefix).items():
                if _durable_epoch(storage, trial) == 1:  # a checkpoint to resume from, and two epochs to go
                    node = where[-1]
                    cluster.workers[node].kill()
                    killed = (trial, node, len(s3.log()))
                    break
            time.sleep(0.05)
        text = _finished(job, log)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)
    trial, lost, at = killed
    (survivor,) = set(WORKERS) - {lost}
    assert lost not in cluster.nodes()  # Ray saw the node die
    assert "tune: 1 trials (1 completed)" in text, text[-3000:]

    # the trial continued on the surviving node: its rank-0 worker's events came from the lost node before the kill,
    # from the survivor after it (the head takes no Train worker)
    after = _trial_nodes(s3.log(at), prefix)
    assert set(after[trial]) == {survivor}, after
    assert _trial_nodes(s3.log(start), prefix)[trial][0] == lost

    # no trial lost or repeated, each epoch once in progress.csv and TensorBoard
    folder = st.download(f"{storage}/lost", tmp_path / "copy", skip=lambda rel: rel.startswith("tune/runs/"))
    dirs = _check_each_epoch_once(folder, epochs, 1)
    # the interrupted trial restarted from its checkpoint: its rank-0 worker's first start logged epochs 1..k
    # (k >= 1, the checkpoint seen at the kill), its restart k+1.. only (a restart from scratch would log 1 again)
    (path,) = [p for p in dirs if p.name.split("_")[2] == trial]
    files = _steps_by_file(path, "val/lesion_bacc")
    assert len(files) == 2, files
    before, restarted = files
    assert before == list(range(1, before[-1] + 1)) and restarted == list(range(before[-1] + 1, epochs + 1)), files
    assert math.isfinite(pd.read_parquet(folder / "tune" / "results.parquet")["best_objective"].max())
    print(f"node {lost} killed in trial {trial}; epochs logged by its worker's starts: {files}")
