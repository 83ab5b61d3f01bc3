"""GPU path: images/s of skintune's Ray Train loop (1 GPU worker: bf16 autocast, channels_last, pinned memory,
optionally torch.compile, optionally nvJPEG decoding and augmentation on the GPU) against a plain timm AMP
training loop on the same model, data and batch size, plus the GPU's mean utilisation during each.
Goal (issue 8): skintune / plain >= 0.95.

Needs a CUDA device; on a machine without one it says so and writes nothing (the CPU path is what the tests
cover). Run it where a GPU is:

    python -m benchmarks.bench_gpu [--n 8192] [--image-size 224] [--batch-size 128] [--epochs 4] \
        [--workers 10] [--compile] [--gpu-decode]

Writes ``gpu.json`` (``gpu_decode.json`` with ``--gpu-decode``). The ratio is of the median epoch after the
first (cuDNN autotuning, worker start-up). Measured 2026-11-26 on an H200 with 16 cores: see the README.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

import torch

from benchmarks.common import synthetic, write_result


class Utilisation:
    """Samples the GPU's utilisation (percent, via NVML through torch) every 0.2 s while active."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.samples.append(float(torch.cuda.utilization(0)))
            except Exception:  # noqa: BLE001 - no NVML: report no figure rather than fail the benchmark
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(statistics.mean(self.samples), 1) if self.samples else None


def _reference(prepared: str, backbone: str, compile_: bool = False):
    """What the plain loops share: the training transform (timm's mean and std for ``backbone``) and the model
    (channels_last, a head per lesion class, optionally compiled) with its optimizer."""
    import timm

    from trainables.data.loader import Augment, build_transforms
    from trainables.data.prepare import load_info

    info = load_info(prepared)
    model = timm.create_model(backbone, pretrained=False, num_classes=len(info["lesion_classes"]))
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = build_transforms(info["prepare_options"]["image_size"], cfg["mean"], cfg["std"], True, Augment())
    model = model.cuda().to(memory_format=torch.channels_last)
    model = torch.compile(model) if compile_ else model
    return transform, model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _amp_step(model, optimizer, images: torch.Tensor, lesion: torch.Tensor) -> None:
    """One textbook bf16-autocast training step."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(images).float(), lesion)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def plain_amp(prepared: str, backbone: str, batch_size: int, epochs: int, workers: int, compile_: bool) -> list[float]:
    """The reference: a textbook timm + torch.autocast(bf16) loop, channels_last, pinned memory. Images/s."""
    from torch.utils.data import DataLoader

    from trainables.data.loader import ShardDataset

    transform, model, optimizer = _reference(prepared, backbone, compile_)
    data = ShardDataset(prepared, "train", transform)
    loader = DataLoader(data, batch_size, shuffle=True, drop_last=True, num_workers=workers, pin_memory=True)
    rates = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        start, seen = time.perf_counter(), 0
        for images, lesion, _site in loader:
            images = images.cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
            _amp_step(model, optimizer, images, lesion.cuda(non_blocking=True))
            seen += len(lesion)
        torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return rates


def skintune_loop(
    prepared: str, backbone: str, batch_size: int, epochs: int, workers: int, compile_: bool, gpu_decode: bool = False
):
    """The real Ray Train worker loop on one GPU worker: images/s per epoch (training part only)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainables.config import TrainConfig
    from trainables.data.prepare import load_info
    from trainables.train_loop import train_worker

    cfg = TrainConfig(
        prepared=prepared,
        backbone=backbone,
        pretrained=False,
        epochs=epochs,
        batch_size=batch_size,
        warmup_epochs=0,
        loader_workers=workers,
        compile=compile_,
        gpu_decode=gpu_decode,
    )
    n_train = sum(s["rows"] for s in load_info(prepared)["shards"] if s["split"] == "train")
    ray.init(include_dashboard=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = TorchTrainer(
                train_worker,
                train_loop_config=cfg.model_dump(),
                scaling_config=ScalingConfig(num_workers=1, use_gpu=True, resources_per_worker={"CPU": workers + 1}),
                run_config=RunConfig(name="gpu", storage_path=tmp),
            )
            result = trainer.fit()
    finally:
        ray.shutdown()
    history = [m for _, m in sorted(result.best_checkpoints, key=lambda cm: cm[1]["epoch"])]
    return [n_train / m["epoch_s"] for m in history]


def decode_breakdown(prepared: str, backbone: str, batch_size: int, workers: int, batches: int = 24) -> dict:
    """Where ``gpu_decode``'s time goes in the training process, median ms per batch: waiting for the loader,
    nvJPEG decoding and the batch augmentation (``launch``: until the call returns; ``done``: to a CUDA
    synchronisation), and one bf16 training step of the model on the batch, for scale."""
    from torch.utils.data import DataLoader
    from torchvision.io import ImageReadMode, decode_jpeg

    from trainables.data.loader import ShardDataset, collate_encoded, split_encoded

    augment, model, optimizer = _reference(prepared, backbone)
    data = ShardDataset(prepared, "train", encoded=True)
    loader = DataLoader(
        data,
        batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=True,
        collate_fn=collate_encoded,
        persistent_workers=True,
    )
    times: dict[str, list[float]] = {}

    def clock(name: str, start: float, sync: bool = False) -> float:
        if sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.setdefault(name, []).append((now - start) * 1e3)
        return now

    seen = 0
    while seen < batches:
        it = iter(loader)
        t = time.perf_counter()
        for data_, lengths, lesion, _site in it:
            t = clock("loader_wait", t)
            images = decode_jpeg(split_encoded(data_, lengths), mode=ImageReadMode.RGB, device="cuda")
            t = clock("decode_done", clock("decode_launch", t), sync=True)
            x = augment.batch(images).contiguous(memory_format=torch.channels_last)
            t = clock("augment_done", clock("augment_launch", t), sync=True)
            _amp_step(model, optimizer, x, lesion.cuda(non_blocking=True))
            t = clock("train_step_done", t, sync=True)
            seen += 1
            if seen >= batches:
                break
    skip = 4  # warm-up: cuDNN autotuning, nvJPEG handles, loader start
    return {name: round(statistics.median(v[skip:]), 2) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    default_workers = max(1, min(10, (os.cpu_count() or 2) - 4))
    parser.add_argument("--workers", type=int, default=default_workers, help="DataLoader processes per loop")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--gpu-decode", action="store_true", help="skintune's loop decodes JPEGs on the GPU (nvJPEG)")
    parser.add_argument("--breakdown", action="store_true", help="with --gpu-decode: time its stages per batch first")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing measured (run it on a GPU node)")
        return
    from trainables.data.prepare import PrepareOptions, prepare

    raw = synthetic(args.n, args.image_size)
    prepared = raw.parent / f"{raw.name}-prepared"
    prepare(PrepareOptions(format="isic2019", root=str(raw), image_size=args.image_size), prepared, progress=False)
    common = (str(prepared), args.backbone, args.batch_size, args.epochs, args.workers, args.compile)
    breakdown = None
    if args.gpu_decode and args.breakdown:
        breakdown = decode_breakdown(str(prepared), args.backbone, args.batch_size, args.workers)
        print("gpu_decode ms per batch:", breakdown, flush=True)
    with Utilisation() as plain_util:
        plain = plain_amp(*common)
    with Utilisation() as ours_util:
        ours = skintune_loop(*common, gpu_decode=args.gpu_decode)
    plain_rate, ours_rate = statistics.median(plain[1:] or plain), statistics.median(ours[1:] or ours)
    result = {
        "settings": vars(args),
        "plain_images_per_s": [round(r, 1) for r in plain],
        "skintune_images_per_s": [round(r, 1) for r in ours],
        "ratio": round(ours_rate / plain_rate, 3),
        "goal_ratio": 0.95,
        "gpu_util_plain_pct": plain_util.mean,
        "gpu_util_skintune_pct": ours_util.mean,
        **({"breakdown_ms_per_batch": breakdown} if breakdown else {}),
    }
    write_result("gpu_decode" if args.gpu_decode else "gpu", result)
    print(result)


if __name__ == "__main__":
    main()
