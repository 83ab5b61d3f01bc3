"""Peak memory of ``prepare`` as the dataset grows (1k, 4k, 16k images): it should not depend on the dataset size.

Each size is prepared from scratch (64 px synthetic sources from the benchmark cache, upscaled to a 224 px output
so that the shards hold about as many bytes per image as real 224 px data; the default shard size; one process per
core) in a fresh child process, which reports its own peak resident memory (VmHWM)
and the largest peak of its shard-writing worker processes (``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Goal
(issue 8): peak at the largest size / peak at the smallest ~ 1. The growth per 1k images is set beside the shard
bytes per 1k images: a process that held the images would grow by at least that much.

    python -m benchmarks.bench_memory [--sizes 1000,4000,16000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import memory_mb, synthetic, write_result

SOURCE_SIZE = 64
IMAGE_SIZE = 224


def child(root: str, out: str) -> None:
    """Runs in the child process: prepare, then print this process's and its workers' peak memory as JSON."""
    from trainables.data.prepare import PrepareOptions, prepare

    start = time.perf_counter()
    info = prepare(PrepareOptions(format="isic2019", root=root, image_size=IMAGE_SIZE), out, progress=False)
    seconds = time.perf_counter() - start
    workers_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    shard_bytes = sum(p.stat().st_size for p in Path(out, "shards").glob("*.parquet"))
    figures = {"images": info["images"], "seconds": seconds, "main_mb": memory_mb()["peak_rss_mb"]}
    print(json.dumps({**figures, "worker_mb": workers_kib / 1024, "shard_mb": shard_bytes / 2**20}))


def measure(n: int) -> dict:
    raw = synthetic(n, SOURCE_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", str(raw), str(Path(tmp, "prepared"))]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    point = {
        "images": figures["images"],
        "prepare_images_per_s": round(figures["images"] / figures["seconds"], 1),
        "main_peak_mb": round(figures["main_mb"], 1),
        "worker_peak_mb": round(figures["worker_mb"], 1),
        "shard_mb": round(figures["shard_mb"], 1),
    }
    print(point, flush=True)
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,4000,16000", help="dataset sizes (images), smallest first")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    for n in sizes:
        synthetic(n, SOURCE_SIZE)  # generated outside the measurement (cached between runs)
    points = [measure(n) for n in sizes]
    small, large = points[0], points[-1]
    grown_k = (large["images"] - small["images"]) / 1000
    result = {
        "settings": {"sizes": sizes, "image_size": IMAGE_SIZE, "source_size": SOURCE_SIZE},
        "prepare": points,
        "main_growth_mb_per_1k_images": round((large["main_peak_mb"] - small["main_peak_mb"]) / grown_k, 2),
        "shard_mb_per_1k_images": round(large["shard_mb"] / large["images"] * 1000, 2),
        "prepare_main_ratio": round(large["main_peak_mb"] / small["main_peak_mb"], 2),
        "prepare_worker_ratio": round(large["worker_peak_mb"] / small["worker_peak_mb"], 2),
        "prepare_peak_ratio": round(
            (large["main_peak_mb"] + large["worker_peak_mb"]) / (small["main_peak_mb"] + small["worker_peak_mb"]), 2
        ),
        "goal_prepare_peak_ratio": 1.1,
    }
    write_result("memory", result)


if __name__ == "__main__":
    main()
