"""Scaling: images/second of real training with 1 vs 2 DDP workers, and epoch time and a worker's peak memory as
the dataset grows (1k, 4k, 16k images).

Each point is one ``TorchTrainer.fit()`` of the project's worker loop (``trainables.train_loop.train_worker``,
wrapped only to report the worker's peak RSS at the end) with one CPU per worker, gloo, as ``skintune train``
builds it. Data: the synthetic ISIC-2019-format set at 64 px, generated and prepared once under the benchmark cache
(5 % validation, no test split). Model: timm's ``test_efficientnet`` (0.1 M parameters, from scratch), the smoke
experiment's backbone, so that 16k images per epoch fit the time budget on 2 cores. The epoch time is the worker's
own ``epoch_s`` (the training part of the last epoch; with ``--epochs 2`` the first epoch's warm-up is left out).

Figures (issue 8): the 2-worker speed-up in images/s; per-image epoch time at the largest vs the smallest size
(1.0 = epoch time exactly linear in the data); a worker's peak RSS at the largest vs the smallest size
(1.0 = memory flat).

    python -m benchmarks.bench_scaling [--sizes 1000,4000,16000] [--ddp-size 4000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import ray
import ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from benchmarks.common import CACHE, memory_mb, synthetic, timed, write_result
from trainables.config import TrainConfig
from trainables.data.prepare import PrepareOptions, load_info, prepare
from trainables.train_loop import train_worker

BACKBONE = "test_efficientnet"
IMAGE_SIZE = 64
BATCH_SIZE = 32


def prepared_dataset(n: int) -> Path:
    """``n`` synthetic images prepared at 64 px (cached: a rerun finds them up to date)."""
    raw = synthetic(n, IMAGE_SIZE)
    out = CACHE / f"prepared-{n}-{IMAGE_SIZE}px"
    opts = PrepareOptions(format="isic2019", root=str(raw), image_size=IMAGE_SIZE, val_fraction=0.05, test_fraction=0.0)
    prepare(opts, out, progress=False)
    return out


def scaling_worker(config: dict) -> None:
    """The project's worker loop; then this worker writes its memory figures to ``<memory_dir>/rank<r>.json``."""
    config = dict(config)
    memory_dir = Path(config.pop("memory_dir"))
    start = memory_mb()
    train_worker(config)
    rank = ray.train.get_context().get_world_rank()
    (memory_dir / f"rank{rank}.json").write_text(json.dumps({"start": start, "end": memory_mb()}))


def fit_point(n: int, workers: int, epochs: int, storage: str) -> dict:
    """One fresh TorchTrainer fit on ``n`` images with ``workers`` DDP workers."""
    prepared = prepared_dataset(n)
    cfg = TrainConfig(
        prepared=str(prepared),
        backbone=BACKBONE,
        pretrained=False,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        warmup_epochs=0,
    )
    memory_dir = Path(storage, f"memory-{n}-{workers}w")
    memory_dir.mkdir()
    trainer = TorchTrainer(
        scaling_worker,
        train_loop_config={**cfg.model_dump(), "memory_dir": str(memory_dir)},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"scaling-{n}-{workers}w", storage_path=storage),
    )
    fit_s, result = timed(trainer.fit)
    memory = [json.loads(p.read_text()) for p in sorted(memory_dir.glob("rank*.json"))]
    history = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
    train_images = int(load_info(prepared)["counts"]["train"]["images"])
    epoch_s = [round(m["epoch_s"], 3) for m in history]
    point = {
        "images": n,
        "train_images": train_images,
        "workers": workers,
        "epoch_s": epoch_s,
        "images_per_s": round(train_images / epoch_s[-1], 1),
        "s_per_1k_images": round(1000 * epoch_s[-1] / train_images, 3),
        "fit_s": round(fit_s, 1),
        "worker_rss_start_mb": round(max(m["start"]["rss_mb"] for m in memory), 1),
        "worker_peak_rss_mb": round(max(m["end"]["peak_rss_mb"] for m in memory), 1),
        "worker_anon_end_mb": round(max(m["end"]["anon_mb"] for m in memory), 1),
    }
    print(point, flush=True)
    return point


def summarise(growth: list[dict], one: dict, two: dict) -> dict:
    small, large = growth[0], growth[-1]
    grown_k = (large["train_images"] - small["train_images"]) / 1000
    return {
        "two_worker_speedup": round(two["images_per_s"] / one["images_per_s"], 2),
        "time_per_image_ratio": round(large["s_per_1k_images"] / small["s_per_1k_images"], 2),
        "worker_rss_ratio": round(large["worker_peak_rss_mb"] / small["worker_peak_rss_mb"], 2),
        "worker_rss_mb_per_1k_images": round((large["worker_peak_rss_mb"] - small["worker_peak_rss_mb"]) / grown_k, 2),
        "goal_time_per_image_ratio": [0.8, 1.25],
        "goal_worker_rss_ratio": 1.1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,4000,16000", help="dataset sizes (images), smallest first")
    parser.add_argument("--ddp-size", type=int, default=4000, help="dataset size of the 1 vs 2 worker comparison")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    for n in {*sizes, args.ddp_size}:
        prepared_dataset(n)  # outside the timing; a no-op when cached
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as storage:
            growth = [fit_point(n, 1, args.epochs, storage) for n in sizes]
            one = next((p for p in growth if p["images"] == args.ddp_size), None)
            one = one or fit_point(args.ddp_size, 1, args.epochs, storage)
            two = fit_point(args.ddp_size, 2, args.epochs, storage)
    finally:
        ray.shutdown()
    settings = {**vars(args), "backbone": BACKBONE, "image_size": IMAGE_SIZE, "batch_size": BATCH_SIZE}
    result = {"settings": settings, "growth": growth, "ddp": [one, two], **summarise(growth, one, two)}
    write_result("scaling", result)


if __name__ == "__main__":
    main()
