"""Storage that is a local path or a cloud URI (s3://, gs://, file://...), through pyarrow's filesystems.

The rule of the project: Ray Train and Tune write checkpoints and trial results to the URI themselves; our own
small artifacts (JSON, YAML, Parquet) are written here, atomically on local disk (temp name, then rename; an
object store's put is atomic already). Bulk inputs that a worker reads many times (prepared shards) are copied
once to a node-local cache (:func:`local_dir`); outputs built locally are published with :func:`upload`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from pathlib import Path

CACHE = Path(os.environ.get("SKINTUNE_CACHE", Path.home() / ".cache" / "skintune"))


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def _fs(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def fs_path(path: str) -> str:
    """The path inside its filesystem (what Ray reports as a checkpoint's ``path``: no scheme)."""
    return _fs(path)[1] if is_uri(path) else str(Path(path).resolve())


def exists(path: str) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_bytes(path: str, data: bytes) -> None:
    """Write whole or not at all: a reader never sees a half-written file."""
    if is_uri(path):
        fs, p = _fs(path)
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p) as f:
            f.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def write_parquet(path: str, frame) -> None:
    """A pandas DataFrame as Parquet (without its index), written as :func:`write_bytes` writes."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes(path, buffer.getvalue())


def upload(local: str | Path, uri: str) -> None:
    """Copy a local folder's files under ``uri`` (existing files are replaced, others kept)."""
    import pyarrow.fs

    if not is_uri(uri):
        shutil.copytree(local, uri, dirs_exist_ok=True)
        return
    fs, p = _fs(uri)
    fs.create_dir(p, recursive=True)
    pyarrow.fs.copy_files(str(local), p, destination_filesystem=fs, use_threads=True)


def download(uri: str, local: str | Path, skip=None) -> Path:
    """Copy the files under ``uri`` into ``local``, leaving out relative paths for which ``skip(path)`` holds."""
    import pyarrow.fs

    fs, root = _fs(uri)
    local = Path(local)
    selector = pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        rel = info.path[len(root.rstrip("/")) + 1 :]
        if info.type != pyarrow.fs.FileType.File or (skip and skip(rel)):
            continue
        dest = local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return local


def cache_dir(kind: str, uri: str) -> Path:
    """The node-local folder of ``kind`` (remote, staging, mirror) kept for ``uri``."""
    return CACHE / kind / hashlib.sha256(uri.encode()).hexdigest()[:16]


def local_dir(path: str, marker: str = "dataset.json") -> str:
    """A local folder with the contents of ``path``: itself when local, else a node-local cached copy.

    The copy is made once per node (``marker`` is copied last, so its presence means complete) and shared by
    every worker and trial on the node; concurrent first calls race harmlessly (each writes its own temp dir).
    """
    if not is_uri(path):
        return path
    cached = cache_dir("remote", path)
    if (cached / marker).is_file():
        return str(cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=cached.name + ".", dir=cached.parent))
    try:
        download(path, tmp)
        if not (tmp / marker).is_file():
            raise FileNotFoundError(f"{join(path, marker)} not found")
        with contextlib.suppress(OSError):  # another worker finished first: use its copy
            os.replace(tmp, cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(cached)
