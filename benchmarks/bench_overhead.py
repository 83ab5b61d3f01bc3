"""Train-loop overhead: epoch time of the Ray Train loop (1 worker) vs a plain single-process PyTorch loop.

Same prepared data, model, batch size, loss, optimizer and number of steps; both on one CPU thread (a Ray worker
with 1 CPU runs torch with OMP_NUM_THREADS=1). Also the seconds from ``TorchTrainer.fit()`` to the first
training step. Goal (issue 3): Ray/plain epoch-time ratio <= 1.10.

    python -m benchmarks.bench_overhead [--n 600] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch.utils.data import DataLoader

from benchmarks.common import write_result
from trainables.config import TrainConfig
from trainables.data.loader import ShardDataset
from trainables.data.prepare import PrepareOptions, load_info, prepare
from trainables.data.synthetic import generate
from trainables.factory import build_parts
from trainables.model import param_groups
from trainables.train_loop import train_worker


def plain_epochs(cfg: TrainConfig, epochs: int) -> list[float]:
    """The same work as one Train worker, without Ray: seconds per training epoch."""
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    parts = build_parts(cfg, load_info(cfg.prepared), pretrained_weights=True, with_loss=True)
    data = ShardDataset(cfg.prepared, "train", parts.train_transform())
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    model, loss_fn = parts.model, parts.loss
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr_backbone, cfg.lr_head, cfg.weight_decay))
    times = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for images, lesion, site in loader:
            lesion_logits, site_logits = model(images)
            out = loss_fn(lesion_logits, site_logits, lesion, site)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def ray_epochs(cfg: TrainConfig, storage: str) -> tuple[list[float], float]:
    """Epoch times reported by the real worker loop, and seconds from fit() to its first step."""
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=cfg.model_dump(),
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name="overhead", storage_path=storage),
    )
    started = time.time()
    result = trainer.fit()
    history = [m for _, m in sorted(result.best_checkpoints, key=lambda cm: cm[1]["epoch"])]
    return [m["epoch_s"] for m in history], history[0]["first_step_at"] - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp, "raw"), n=args.n, image_size=80, seed=0, progress=False)
        opts = PrepareOptions(format="isic2019", root=str(Path(tmp, "raw")), image_size=64)
        prepare(opts, Path(tmp, "prepared"), progress=False)
        cfg = TrainConfig(
            prepared=str(Path(tmp, "prepared")),
            backbone=args.backbone,
            pretrained=False,
            epochs=args.epochs,
            batch_size=32,
            warmup_epochs=0,
        )
        ray.init(num_cpus=2, include_dashboard=False)
        try:
            ray_times, first_step_s = ray_epochs(cfg, str(Path(tmp, "ray")))
        finally:
            ray.shutdown()
        plain_times = plain_epochs(cfg, args.epochs)
    # the first epoch of each side warms up allocators and caches: compare the later ones
    ray_s, plain_s = statistics.median(ray_times[1:]), statistics.median(plain_times[1:])
    result = {
        "backbone": args.backbone,
        "images": args.n,
        "image_size": 64,
        "batch_size": 32,
        "epochs": args.epochs,
        "ray_epoch_s": [round(t, 3) for t in ray_times],
        "plain_epoch_s": [round(t, 3) for t in plain_times],
        "ratio": round(ray_s / plain_s, 3),
        "goal_ratio": 1.10,
        "fit_to_first_step_s": round(first_step_s, 2),
    }
    write_result("overhead", result)
    print(result)


if __name__ == "__main__":
    main()
