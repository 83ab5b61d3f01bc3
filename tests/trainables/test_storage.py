"""trainables.storage on a real pyarrow filesystem through file:// URIs (the same code path as s3:// or gs://)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainables import storage


@pytest.fixture
def bucket(tmp_path):
    return tmp_path / "bucket", f"file://{tmp_path}/bucket"


def test_write_read_exists_on_a_uri_and_a_path(bucket, tmp_path):
    folder, uri = bucket
    for base, disk in ((uri, folder), (str(tmp_path / "plain"), tmp_path / "plain")):
        target = storage.join(base, "a", "b.json")
        assert not storage.exists(target)
        storage.write_text(target, json.dumps({"x": 1}))
        assert storage.exists(target) and json.loads(storage.read_text(target)) == {"x": 1}
        assert (disk / "a" / "b.json").is_file()
        assert not [p for p in (disk / "a").iterdir() if p.name != "b.json"]  # no temp file left behind
    assert storage.fs_path(uri) == str(folder)


def test_upload_then_download_with_a_skip_rule(bucket, tmp_path):
    _, uri = bucket
    src = tmp_path / "src"
    for rel in ("report/r.html", "run/checkpoint_000001/model.safetensors", "metrics.json"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    storage.upload(src, uri)
    got = storage.download(uri, tmp_path / "down", skip=lambda rel: "checkpoint_" in rel)
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file()) == ["metrics.json", "report/r.html"]
    assert (got / "report" / "r.html").read_text() == "report/r.html"


def test_local_dir_copies_once_and_needs_the_marker(bucket, tmp_path, monkeypatch):
    folder, uri = bucket
    monkeypatch.setattr(storage, "CACHE", tmp_path / "cache")
    assert storage.local_dir(str(tmp_path)) == str(tmp_path)  # a local path is used in place
    storage.write_text(storage.join(uri, "shards", "s.parquet"), "shard")
    with pytest.raises(FileNotFoundError, match="dataset.json"):  # an incomplete upload is never used
        storage.local_dir(uri)
    storage.write_text(storage.join(uri, "dataset.json"), "{}")
    local = storage.local_dir(uri)
    assert local.startswith(str(tmp_path / "cache")) and Path(local, "shards", "s.parquet").read_text() == "shard"
    (folder / "shards" / "s.parquet").write_text("changed")
    assert storage.local_dir(uri) == local and Path(local, "shards", "s.parquet").read_text() == "shard"  # cached
