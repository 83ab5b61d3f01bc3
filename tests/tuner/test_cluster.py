"""The cluster workflow on a real `ray start --head` cluster (the session's LocalHead: loopback ports, its own
temp dir and token file) with results on a real S3 server (moto's server mode, on loopback): `skintune submit` of
a smoke search and its retrain, the Jobs API wrapped by `skintune jobs`, token handling, one-line errors, then
compare/export reading and writing the same s3:// storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tuner.cli import main

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuner.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def s3(monkeypatch, free_port) -> dict:
    """A real S3 API (moto's server, in this process, on a free loopback port) with a bucket; the environment
    that points pyarrow (and so Ray Train, Tune and skintune) at it, as AWS_ENDPOINT_URL does for MinIO."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="lab")
    yield env
    server.stop()


@pytest.fixture
def uri_experiment(tmp_path, smoke_data):
    """A smoke experiment YAML whose storage (and so its prepared shards) is on S3."""
    raw = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    raw["data"].pop("synth")
    raw["data"]["root"] = smoke_data[0]  # prepared anew from the raw files, into the URI
    raw["name"] = "remote"
    raw["tune"].update(num_samples=1, max_epochs=2)  # one trial: the search itself is tested elsewhere
    raw["train"]["workers_per_trial"] = 1
    config = tmp_path / "remote.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config, "s3://lab/skintune", tmp_path / "copy"


def _submit(address: str, s3: dict, *command: str) -> subprocess.CompletedProcess:
    """`skintune submit`, passing the S3 endpoint and credentials to the job as a user would (--env)."""
    env_args = [arg for key, value in s3.items() for arg in ("--env", f"{key}={value}")]
    done = _cli("submit", "--address", address, *env_args, "--", *command)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_submit_tune_and_retrain_jobs_then_compare_export_on_s3(ray_head, s3, uri_experiment):
    from trainables import storage as st

    config, storage, folder = uri_experiment
    done = _submit(ray_head.dashboard, s3, "tune", "--config", str(config), "--storage", storage)
    job_id = done.stdout.split("submitted job ", 1)[1].split()[0]
    assert f"job {job_id} SUCCEEDED" in done.stdout
    assert "tune: 1 trials" in done.stdout  # the job's own output was streamed
    token = ray_head.token_path.read_text().strip()
    assert token not in done.stdout + done.stderr

    # artifacts on S3: config, table, prepared shards (metadata last), Ray Train checkpoints, TensorBoard
    st.download(f"{storage}/remote", folder)
    assert yaml.safe_load((folder / "experiment.yaml").read_text())["storage"] == storage
    table = pd.read_parquet(folder / "tune" / "results.parquet")
    assert len(table) == 1 and (table["status"] != "error").all()
    info = json.loads((folder / "prepared" / "dataset.json").read_text())
    assert all((folder / "prepared" / s["file"]).is_file() for s in info["shards"])
    assert list((folder / "tune" / "runs").glob("*/checkpoint_*"))
    events = [p for p in (folder / "tune").glob("trial_driver_*/events.out.tfevents.*") if p.stat().st_size > 0]
    steps = set()
    for path in events:
        acc = EventAccumulator(str(path)).Reload()
        if "val/lesion_bacc" in acc.Tags()["scalars"]:
            steps.add(tuple(e.step for e in acc.Scalars("val/lesion_bacc")))
    assert steps and all(s and s[0] == 1 for s in steps)  # the workers' own events reached the URI

    # the Jobs API through `skintune jobs`
    listed = _cli("jobs", "list", "--address", ray_head.dashboard)
    assert listed.returncode == 0 and job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    status = _cli("jobs", "status", job_id, "--address", ray_head.dashboard)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = _cli("jobs", "logs", job_id, "--address", ray_head.dashboard)
    assert "tune: 1 trials" in logs.stdout

    # the rest of the pipeline reads and writes the same storage: retrain on the cluster, compare/export here
    common = ["--storage", storage, "--experiment", "remote"]
    _submit(ray_head.dashboard, s3, "retrain", *common, "--seeds", "1")
    metrics = json.loads(st.read_text(f"{storage}/remote/retrain/mtl/seed_0/metrics.json"))
    assert metrics["test"] and not metrics["checkpoint"].startswith("/")  # relative: the folder can move
    assert main(["compare", *common]) == 0
    assert st.exists(f"{storage}/remote/report/report.html") and st.exists(f"{storage}/remote/report/results.parquet")
    assert main(["export", *common]) == 0
    bundle = st.download(f"{storage}/remote/export", folder / "export")
    assert {"model.safetensors", "model.torchscript.pt", "MODEL_CARD.md"} <= {p.name for p in bundle.iterdir()}


def test_job_errors_are_one_line_and_never_show_the_token(ray_head, tmp_path):
    address = ray_head.dashboard
    token = ray_head.token_path.read_text().strip()
    # a job that fails: its final status and where the logs are, exit 2
    failed = _cli("submit", "--address", address, "--", "tune", "--config", str(tmp_path / "missing.yaml"))
    assert failed.returncode == 2
    assert "FAILED" in failed.stderr and "skintune jobs logs" in failed.stderr
    assert "no such experiment file" in failed.stdout  # the job's own one-line error was streamed
    # a refused token (wrong token), an unreachable address, an unknown job: one line, exit 2, no traceback
    refused = _cli("jobs", "list", "--address", address, env={"RAY_AUTH_TOKEN": "0" * 64})
    unreachable = _cli("jobs", "list", "--address", "http://127.0.0.1:9")
    unknown = _cli("jobs", "status", "raysubmit_doesnotexist", "--address", address)
    for done, words in ((refused, "refused"), (unreachable, "cannot reach"), (unknown, "no job")):
        assert done.returncode == 2, done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert token not in done.stdout + done.stderr
    # results written to a relative path would be lost in the job's temp working dir
    relative = _cli("submit", "--address", address, "--", "tune", "--config", "x.yaml", "--storage", "results")
    assert relative.returncode == 2 and "relative path" in relative.stderr
