"""Make sure an experiment's prepared data exists: synthesise (when configured) and prepare, both idempotent.

Prepared data on cloud storage (``data.prepared: s3://...``, or the default ``<storage>/<name>/prepared`` when
``storage`` is a URI) is prepared in a local cache first and then uploaded, ``dataset.json`` last: its presence
at the URI means the upload is complete. Workers read a node-local copy (``trainables.storage.local_dir``).
"""

from __future__ import annotations

from pathlib import Path

from trainables import storage
from tuner.config import ExperimentConfig

META_FILES = ("dataset.json", "prepare_report.json")
PREPARE_FIELDS: tuple[str, ...] = ("format", "root", "options", "image_size", "quality", "val_fraction")
PREPARE_FIELDS += ("test_fraction", "seed", "official_split")


def ensure_data(exp: ExperimentConfig, progress: bool = True) -> str:
    """Return the prepared dataset folder (or URI) of ``exp``, creating it if needed (nothing redone if up to date)."""
    from trainables.data.prepare import PrepareOptions

    d = exp.data
    target = exp.prepared_dir
    if storage.is_uri(target) and storage.exists(storage.join(target, "dataset.json")):
        return target
    if d.synth is not None:
        from trainables.data.synthetic import generate

        generate(d.root, n=d.synth.n, image_size=d.synth.image_size, seed=d.synth.seed, progress=progress)
    prepare_to(PrepareOptions(**{k: getattr(d, k) for k in PREPARE_FIELDS}), target, progress=progress)
    return target


def prepare_to(opts, target: str, **kwargs) -> dict:
    """``prepare`` into a local folder or a URI (via a local staging copy that makes reruns incremental)."""
    from trainables.data.prepare import prepare

    local = _staging(target) if storage.is_uri(target) else Path(target)
    info = prepare(opts, local, **kwargs)
    if storage.is_uri(target):
        publish_prepared(local, target)
    return info


def _staging(uri: str) -> Path:
    return storage.cache_dir("staging", uri)


def publish_prepared(local: Path, uri: str) -> None:
    """Upload the shards, then the metadata: a reader that finds dataset.json finds every shard."""
    storage.upload(local / "shards", storage.join(uri, "shards"))
    for name in META_FILES:
        if (local / name).is_file():
            storage.write_bytes(storage.join(uri, name), (local / name).read_bytes())
