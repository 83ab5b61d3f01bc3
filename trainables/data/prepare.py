"""``skintune prepare``: read a dataset through its adapter, split it, write Parquet shards and ``dataset.json``.

Each shard holds up to ``shard_size`` images of one split with the canonical columns (docs/design.md, "Prepared
data"), the images decoded once, made upright RGB, resized (shorter side = ``image_size``) and re-encoded as JPEG,
so trials never touch the multi-megapixel originals. Shards are made in parallel (one process per core, one shard
in memory per process, so memory does not grow with the dataset), written to a temporary name and renamed, so a
killed run leaves no partial shard and a rerun only makes the missing ones. Same inputs and options: nothing is redone.

Layout of ``out``::

    dataset.json                  vocabularies, counts, split sizes, metadata fields and their missing rates,
                                  fingerprint, options, shard list
    shards/<split>-<n>-<key>.parquet
    prepare_report.json           only when images could not be read: which, and why
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from trainables import storage
from trainables.data.adapters import read_dataset
from trainables.data.images import BadImage, prepare_image
from trainables.data.schema import MISSING_SEX, MISSING_SITE, SHARD_COLUMNS, SPLITS, RawTable
from trainables.data.split import assign_splits, check_no_leakage
from trainables.errors import UserError

DATASET_JSON = "dataset.json"
REPORT_JSON = "prepare_report.json"
FORMAT_VERSION = 1
SHARD_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("group_id", pa.string()),
        ("lesion", pa.int16()),
        ("site", pa.int16()),
        ("age", pa.float32()),  # years; NaN = missing
        ("sex", pa.int8()),  # index into schema.SEX_CLASSES; -1 = missing
        ("split", pa.string()),
        ("source", pa.string()),
        ("image", pa.binary()),
    ]
)


@dataclass
class PrepareOptions:
    """Everything that determines the prepared dataset (``workers``/``skip_bad`` do not change its content)."""

    format: str
    root: str
    options: dict = field(default_factory=dict)
    image_size: int = 224
    quality: int = 90
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    official_split: bool = False
    shard_size: int = 1024

    def content_dict(self) -> dict:
        return {
            **asdict(self),
            "root": str(Path(self.root).expanduser().resolve()),
            "version": FORMAT_VERSION,
        }


def _split_column(table: RawTable, opts: PrepareOptions) -> np.ndarray:
    frame = table.frame
    if opts.official_split:
        official = frame["official_split"]
        if official.isna().any():
            raise UserError(
                f"--official-split: the {table.format} release defines no split for "
                f"{int(official.isna().sum())} images (e.g. {frame.loc[official.isna(), 'image_id'].iloc[0]!r}); "
                "drop --official-split"
            )
        split = official.to_numpy(dtype=object)
        check_no_leakage(frame["group_id"].to_numpy(), split)
        return split
    return assign_splits(
        frame["lesion"].to_numpy(),
        frame["group_id"].to_numpy(),
        opts.val_fraction,
        opts.test_fraction,
        opts.seed,
    )


def _input_key(frame: pd.DataFrame, opts: PrepareOptions) -> str:
    """Hash of the options, the table and each image file's size and mtime: equal key, equal output."""
    h = hashlib.sha256(json.dumps(opts.content_dict(), sort_keys=True, default=str).encode())
    h.update(pd.util.hash_pandas_object(frame.drop(columns=["official_split"]), index=False).to_numpy().tobytes())
    for path in frame["image_path"]:
        st = os.stat(path)
        h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


ROW_GROUP = 256  # images a shard writer holds at a time: one Parquet row group


def _write_shard(path: str, rows: pd.DataFrame, image_size: int, quality: int) -> dict:
    """Worker: encode ``rows`` into one shard file, a row group at a time (so a worker's memory does not grow with
    the shard size); returns its row count, digest and unreadable images, also stored in the file's metadata."""
    bad: list[dict] = []
    kept_rows = 0
    digest = hashlib.sha256()
    tmp = f"{path}.tmp-{os.getpid()}"
    with pq.ParquetWriter(tmp, SHARD_SCHEMA, compression="none") as writer:
        for start in range(0, len(rows), ROW_GROUP):
            part = rows.iloc[start : start + ROW_GROUP]
            images, keep = [], []
            for i, row in enumerate(part.itertuples(index=False)):
                try:
                    data = prepare_image(row.image_path, image_size, quality)
                except BadImage as exc:
                    bad.append({"image_id": row.image_id, "path": row.image_path, "reason": str(exc)})
                    continue
                digest.update(row.image_id.encode() + hashlib.sha256(data).digest())
                if not (np.isnan(row.age) and row.sex == MISSING_SEX):  # the patient is part of the content; a
                    digest.update(f"|{row.age!r}|{row.sex}".encode())  # table without any: the digest as before
                images.append(data)
                keep.append(i)
            if not keep:
                continue
            kept = part.iloc[keep]
            columns = {c: kept[c].tolist() for c in SHARD_COLUMNS if c != "image"}
            writer.write_table(pa.table({**columns, "image": images}, schema=SHARD_SCHEMA))
            kept_rows += len(kept)
        meta = {"rows": kept_rows, "digest": digest.hexdigest(), "bad": bad}
        writer.add_key_value_metadata({"skintune": json.dumps(meta)})
    os.replace(tmp, path)
    return meta


def _read_shard_meta(path: Path) -> dict:
    return json.loads(pq.read_metadata(path).metadata[b"skintune"])


def _plan(frame: pd.DataFrame, key: str, shard_size: int) -> list[tuple[str, pd.DataFrame]]:
    plan = []
    for split in SPLITS:
        rows = frame[frame["split"] == split]
        for n, start in enumerate(range(0, len(rows), shard_size)):
            plan.append((f"{split}-{n:05d}-{key[:12]}.parquet", rows.iloc[start : start + shard_size]))
    return plan


def _exit_with_parent(parent: int) -> None:
    """Pool initializer: a worker ends when ``prepare`` itself is killed (SIGKILL leaves the pool no time to stop
    it, and an orphaned worker would wait for work for ever)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed with the parent
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


@contextmanager
def _worker_pool(workers: int):
    """The processes that write the shards, started before the metadata table is read, so that a forked worker
    does not inherit it: their peak memory stays the same for any dataset size (benchmarks/bench_memory.py)."""
    with ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        pool.submit(int).result()  # a forking pool starts all its workers with the first task
        yield pool


def _run_plan(plan, shard_dir: Path, opts: PrepareOptions, pool, workers: int, progress: bool) -> dict[str, dict]:
    metas = {name: _read_shard_meta(shard_dir / name) for name, _ in plan if (shard_dir / name).exists()}
    todo = [(name, rows) for name, rows in plan if name not in metas]
    bar = tqdm(total=sum(len(r) for _, r in plan), unit="img", desc="prepare", disable=not progress)
    bar.update(sum(len(r) for n, r in plan if n in metas))
    pending: dict = {}
    queue = iter(todo)
    while True:
        while len(pending) < 2 * workers and (item := next(queue, None)) is not None:
            name, rows = item
            future = pool.submit(_write_shard, str(shard_dir / name), rows, opts.image_size, opts.quality)
            pending[future] = (name, len(rows))
        if not pending:
            break
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            name, n = pending.pop(future)
            metas[name] = future.result()
            bar.update(n)
    bar.close()
    return metas


def _counts(frame: pd.DataFrame, table: RawTable) -> dict:
    out = {}
    for split in SPLITS:
        part = frame[frame["split"] == split]
        lesion = part["lesion"].value_counts()
        site = part["site"].value_counts()
        out[split] = {
            "images": len(part),
            "groups": int(part["group_id"].nunique()),
            "lesion": {name: int(lesion.get(i, 0)) for i, name in enumerate(table.lesion_classes)},
            "site": {name: int(site.get(i, 0)) for i, name in enumerate(table.site_classes)},
            "site_missing": int(site.get(MISSING_SITE, 0)),
        }
    return out


def _missing(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Per metadata field (schema.METADATA_FIELDS), which rows lack it."""
    return {"site": frame["site"] == MISSING_SITE, "age": frame["age"].isna(), "sex": frame["sex"] == MISSING_SEX}


def _metadata(frame: pd.DataFrame) -> dict:
    """``dataset.json``'s ``metadata``: per field, whether any image has a value (``present``), the share of images
    without one (``missing_rate``) and that share per split (``missing_rate_by_split``; None for an empty split)."""
    out = {}
    for name, missing in _missing(frame).items():
        by_split = {s: missing[frame["split"] == s] for s in SPLITS}
        out[name] = {
            "present": bool(len(frame)) and not bool(missing.all()),
            "missing_rate": float(missing.mean()) if len(frame) else None,
            "missing_rate_by_split": {s: float(m.mean()) if len(m) else None for s, m in by_split.items()},
        }
    return out


def _remove_partial(shard_dir: Path) -> None:
    for leftover in shard_dir.glob("*.tmp-*"):
        leftover.unlink(missing_ok=True)  # half-written by a killed run


def _atomic_json(path: Path, data: dict) -> None:
    storage.write_text(str(path), json.dumps(data, indent=2, default=str))


def prepare(
    opts: PrepareOptions,
    out: str | Path,
    *,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare the dataset into ``out`` and return the contents of its ``dataset.json``."""
    workers = workers or os.cpu_count() or 1
    with _system_allocator(), _worker_pool(workers) as pool:
        return _prepare(opts, Path(out).expanduser(), pool, workers, skip_bad, progress)


@contextmanager
def _system_allocator():
    """Arrow's system allocator while preparing (its pool workers fork with it). Arrow's default, mimalloc, keeps
    the memory of the many small string buffers a large metadata table passes through, so that prepare's peak
    grew with the dataset (benchmarks/bench_memory.py); the system allocator gives it back."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _prepare(opts: PrepareOptions, out: Path, pool, workers: int, skip_bad: bool, progress: bool) -> dict:
    table = read_dataset(opts.format, opts.root, opts.options)
    frame = table.frame.copy()
    frame["split"] = _split_column(table, opts)
    key = _input_key(table.frame, opts)
    info_path = out / DATASET_JSON
    if info_path.exists():
        info = json.loads(info_path.read_text())
        shards_there = all((out / s["file"]).exists() for s in info.get("shards", []))
        if info.get("input_key") == key and shards_there and (skip_bad or not info.get("bad_images")):
            if progress:
                print(f"prepare: {out} is up to date ({info['images']} images); nothing to do")
            return info
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    _remove_partial(shard_dir)
    plan = _plan(frame, key, opts.shard_size)
    metas = _run_plan(plan, shard_dir, opts, pool, workers, progress)
    _remove_partial(shard_dir)  # (one a dying worker of a killed run may have left after the first sweep)

    bad = [b for name, _ in plan for b in metas[name]["bad"]]
    bad_ids = {b["image_id"] for b in bad}
    if bad:
        _atomic_json(out / REPORT_JSON, {"bad_images": bad})
        if not skip_bad:
            first = bad[0]
            raise UserError(
                f"{len(bad)} image(s) could not be used, e.g. image {first['image_id']!r} ({first['path']}): "
                f"{first['reason']}; the full list is in {out / REPORT_JSON}. Replace or remove them (and their "
                "rows), or rerun with --skip-bad to leave them out"
            )
    for stale in shard_dir.glob("*.parquet"):
        if stale.name not in metas:
            stale.unlink()  # shards of an earlier run with other inputs or options
    kept = frame[~frame["image_id"].isin(bad_ids)]
    fingerprint = hashlib.sha256("".join(metas[name]["digest"] for name, _ in plan).encode()).hexdigest()
    info = {
        "format_version": FORMAT_VERSION,
        "prepare_options": opts.content_dict(),
        "input_key": key,
        "fingerprint": fingerprint,
        "images": len(kept),
        "lesion_classes": table.lesion_classes,
        "site_classes": table.site_classes,
        "site_missing_rate": float((kept["site"] == MISSING_SITE).mean()),
        "metadata": _metadata(kept),
        "counts": _counts(kept, table),
        "bad_images": bad,
        "shards": [
            {"file": f"shards/{name}", "split": name.split("-")[0], "rows": metas[name]["rows"]} for name, _ in plan
        ],
    }
    _atomic_json(info_path, info)
    if progress:
        sizes = ", ".join(f"{s} {info['counts'][s]['images']}" for s in SPLITS)
        print(f"prepare: wrote {len(plan)} shards to {out} ({sizes}; {len(bad)} unreadable image(s) left out)")
    return info


def load_info(prepared: str | Path) -> dict:
    """Read ``dataset.json`` of a prepared dataset, with a clear error where there is none."""
    path = Path(prepared).expanduser() / DATASET_JSON
    if not path.exists():
        raise UserError(f"{path} not found: run `skintune prepare --out {path.parent} ...` first")
    return json.loads(path.read_text())
