"""Shared by the benchmarks: machine description, cached synthetic data and JSON output under benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RESULTS_DIR = Path(os.environ.get("SKINTUNE_BENCH_RESULTS", RESULTS))  # where this run writes (run_all --quick)
# generated data is kept between runs (synthetic images are deterministic per (n, size, seed))
CACHE = Path(os.environ.get("SKINTUNE_BENCH_CACHE", Path.home() / ".cache" / "skintune-bench"))
SHARED_MACHINE = "shared machine: other jobs may have run on the same cores during the measurement"


def machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "note": SHARED_MACHINE,
    }


def write_result(name: str, result: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **result}
    path.write_text(json.dumps(payload, indent=2))
    print(f"{name}: wrote {path}")
    return path


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def synthetic(n: int, image_size: int = 64) -> Path:
    """The synthetic ISIC-2019-format dataset of ``n`` images, generated once under :data:`CACHE`."""
    from trainables.data.synthetic import generate

    return generate(CACHE / f"synth-{n}-{image_size}px", n=n, image_size=image_size, seed=0, progress=False)


def memory_mb() -> dict:
    """This process's resident memory in MiB: now (``rss_mb``; ``anon_mb`` of it not file-backed) and its peak.

    From /proc/self/status on Linux (VmHWM is the peak of this process image, unlike ``ru_maxrss``, which a
    process can inherit across fork and exec); elsewhere the peak from ``getrusage``.
    """
    status = Path("/proc/self/status")
    if status.exists():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        kb = {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM", "RssAnon")}
        return {"rss_mb": kb["VmRSS"] / 1024, "peak_rss_mb": kb["VmHWM"] / 1024, "anon_mb": kb["RssAnon"] / 1024}
    unit = 1024 * 1024 if platform.system() == "Darwin" else 1024  # bytes on macOS, KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit
    return {"rss_mb": peak, "peak_rss_mb": peak, "anon_mb": peak}
