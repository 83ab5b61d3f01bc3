"""`skintune prepare` killed with SIGKILL part-way, then run again: it finishes, leaves no temporary or partial
shard behind, and its output is the same as an uninterrupted run's (every image once, readable shards)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from trainables.data.synthetic import generate

ROOT = Path(__file__).resolve().parents[2]


def _prepare(raw: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "tuner.cli", "prepare", "--format", "isic2019", "--root", str(raw)]
    return [*cmd, "--out", str(out), "--image-size", "160", "--shard-size", "16", "--workers", "2"]


def _content(out: Path) -> tuple[dict, list[str]]:
    info = json.loads((out / "dataset.json").read_text())
    ids = []
    for shard in info["shards"]:
        table = pq.read_table(out / shard["file"])  # every shard is whole: it parses
        assert table.num_rows == shard["rows"]
        ids += table.column("image_id").to_pylist()
    keep = ("images", "fingerprint", "lesion_classes", "site_classes", "counts")
    return {k: info[k] for k in keep if k in info} | {"shards": sorted(s["file"] for s in info["shards"])}, ids


def test_prepare_sigkilled_midway_resumes_to_the_same_result(tmp_path):
    raw = generate(tmp_path / "raw", n=600, image_size=48, seed=0, progress=False)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        _prepare(raw, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 120
        while len(list((killed / "shards").glob("*.parquet"))) < 3:  # some shards written, most not yet
            assert proc.poll() is None, "prepare ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the main process and its workers mid-shard
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (killed / "dataset.json").exists()  # an interrupted run never looks complete
    written_before = {p.name: p.stat().st_mtime_ns for p in (killed / "shards").glob("*.parquet")}
    partial = [p.name for p in (killed / "shards").iterdir() if not p.name.endswith(".parquet")]

    for out in (killed, clean):
        done = subprocess.run(_prepare(raw, out), env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    leftovers = [p.name for p in (killed / "shards").iterdir() if not p.name.endswith(".parquet")]
    assert leftovers == [], f"{leftovers} left; after the kill there were {partial}"  # no temp file survives
    assert {p.name for p in (killed / "shards").iterdir()} == {Path(f).name for f in _content(clean)[0]["shards"]}
    for name, mtime in written_before.items():  # whole shards of the killed run were kept, not redone
        assert (killed / "shards" / name).stat().st_mtime_ns == mtime
    (info_k, ids_k), (info_c, ids_c) = _content(killed), _content(clean)
    assert info_k == info_c
    assert len(ids_k) == len(set(ids_k)) == 600 and sorted(ids_k) == sorted(ids_c)
