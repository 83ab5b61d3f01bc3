"""GPU throughput of skintune's training, every figure of issue 20 in one run, against the same model and batch:

- **ceiling**: the Train loop's own training step (the two-head model and loss, bf16 autocast, channels_last,
  AdamW, gradient clipping, the loss values read back) on one batch already on the GPU: what the model allows;
- **default**: skintune's Ray Train loop on one GPU worker, CPU loader workers decoding and augmenting;
- **gpu_decode**: the same loop with ``train.gpu_decode`` (nvJPEG, ``BatchAugment`` on the GPU, the next batch
  prepared on a side stream);
- **packing**: trial-epochs per GPU-hour with 1, 2 and 4 trials on one GPU at once, each a Ray Train run of one
  worker holding 1 / k of the GPU (``train.gpus_per_worker``), started together as Ray tasks the way ``retrain``
  runs them (gpu_decode by default: the CPU cores cannot feed four loaders; ``--packing-path default``).
Optionally ``--plain``: the textbook timm AMP loop (issue 8's reference), ``--breakdown``: gpu_decode's stages.

Goals (issue 20): gpu_decode >= 0.85 x the ceiling at 224 px (EfficientNet-Lite0, batch 128); 4 trials per GPU
give >= 2.5 x the trial throughput of one.

Needs a CUDA device: without one it says so and writes nothing, unless ``--smoke``, which runs every phase's
code on the CPU at tiny settings (figures meaningless; writes ``gpu_smoke.json``). Run it where a GPU is:

    python -m benchmarks.bench_gpu [--n 8192] [--image-size 224] [--batch-size 128] [--epochs 3] \
        [--workers 10] [--packing 1,2,4] [--packing-path gpu_decode|default] [--plain] [--breakdown] [--compile]

Writes ``gpu.json``. Loop figures are the median epoch after the first (cuDNN autotuning, worker start-up).
Packing's headline (``packing_k_vs_1``) counts every trial-epoch (validation and checkpoints included) over the time
from the first trial's first training step to the last trial's end; ``_steady`` sums each trial's median epoch
rate (training part; right when the trials' epochs overlap), ``_wall`` counts from the start (Ray start-up of the
runs included).
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

GOAL_DECODE_VS_CEILING = 0.85
GOAL_PACKING_4_VS_1 = 2.5


class Utilisation:
    """Samples the GPU's utilisation (percent, via NVML through torch) every 0.2 s while active."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if not torch.cuda.is_available():
            return
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


def _median_after_first(rates: list[float]) -> float:
    return statistics.median(rates[1:] or rates)


def _train_config(args, prepared: str, gpu_decode: bool, workers: int | None = None) -> dict:
    from trainables.config import TrainConfig

    return TrainConfig(
        prepared=prepared,
        backbone=args.backbone,
        pretrained=False,
        epochs=args.epochs,
        batch_size=args.batch_size,
        warmup_epochs=0,
        loader_workers=args.workers if workers is None else workers,
        compile=args.compile,
        gpu_decode=gpu_decode,
    ).model_dump()


def ceiling(args, prepared: str, device: torch.device, steps: int = 40, warmup: int = 8) -> dict:
    """The Train loop's training step (trainables/train_loop.py: train_epoch) on one batch already on the device,
    repeated: images/s and ms per step."""
    from trainables.config import TrainConfig
    from trainables.data.prepare import load_info
    from trainables.factory import build_parts
    from trainables.model import param_groups

    cfg = TrainConfig(**_train_config(args, prepared, gpu_decode=False))
    parts = build_parts(cfg, load_info(prepared), with_loss=True)
    assert parts.loss is not None
    on_gpu = device.type == "cuda"
    model, loss_fn = parts.model.to(device), parts.loss.to(device)
    if on_gpu and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr_backbone, cfg.lr_head, cfg.weight_decay))
    g = torch.Generator().manual_seed(0)
    images = torch.randn(cfg.batch_size, 3, parts.image_size, parts.image_size, generator=g).to(device)
    if on_gpu and cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    info = load_info(prepared)
    lesion = torch.randint(len(info["lesion_classes"]), (cfg.batch_size,), generator=g).to(device)
    site = torch.randint(max(1, len(info.get("site_classes") or [])), (cfg.batch_size,), generator=g).to(device)

    def step() -> None:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu and cfg.amp != "off" else None
        with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
            lesion_logits, site_logits = model(images)
        out = loss_fn(lesion_logits.float(), None if site_logits is None else site_logits.float(), lesion, site)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_([*model.parameters(), *loss_fn.parameters()], cfg.grad_clip)
        optimizer.step()
        for k in ("loss", "loss_lesion", "loss_site"):  # the loop reads them each step
            float(out[k].detach())

    for _ in range(warmup):
        step()
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if on_gpu:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"images_per_s": round(cfg.batch_size / seconds, 1), "ms_per_step": round(seconds * 1e3, 2)}


def _trainer(config: dict, name: str, storage: str, use_gpu: bool, resources: dict):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainables.train_loop import train_worker

    return TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage),
    )


def _history(result) -> list[dict]:
    return [m for _, m in sorted(result.best_checkpoints, key=lambda cm: cm[1]["epoch"])]


def _epoch_seconds(result) -> list[float]:
    return [m["epoch_s"] for m in _history(result)]


def skintune_loop(args, prepared: str, n_train: int, gpu_decode: bool, storage: str, use_gpu: bool) -> list[float]:
    """The real Ray Train worker loop on one worker: images/s per epoch (training part only)."""
    config = _train_config(args, prepared, gpu_decode)
    resources = {"CPU": args.workers + 1, **({"GPU": 1} if use_gpu else {})}
    name = f"loop-{'gpu_decode' if gpu_decode else 'default'}"
    result = _trainer(config, name, storage, use_gpu, resources).fit()
    return [round(n_train / s, 1) for s in _epoch_seconds(result)]


def packing(args, prepared: str, n_train: int, trials: int, storage: str, use_gpu: bool) -> dict:
    """``trials`` one-worker Ray Train runs at once on one GPU, each holding 1 / trials of it, started together as
    Ray tasks (as retrain runs its seeds); their trial-epochs per GPU-hour."""
    import ray

    cpus = max(2, (os.cpu_count() or 2) // trials)  # the machine's cores shared out; one for the training process
    workers = min(args.workers, cpus - 1)
    config = _train_config(args, prepared, gpu_decode=args.packing_path == "gpu_decode", workers=workers)
    resources = {"CPU": workers + 1, **({"GPU": round(1.0 / trials, 4)} if use_gpu else {})}

    @ray.remote(num_cpus=0)
    def fit(k: int) -> tuple[list[float], float, float]:
        history = _history(_trainer(config, f"pack{trials}-{k}", storage, use_gpu, resources).fit())
        first_step = min(m["first_step_at"] for m in history if m.get("first_step_at"))
        return [m["epoch_s"] for m in history], first_step, time.time()

    start = time.time()
    done = ray.get([fit.remote(k) for k in range(trials)])
    end = max(finish for _, _, finish in done)
    wall = end - start
    training = end - min(first for _, first, _ in done)  # from the first training step to the last trial's end
    epochs = [seconds for seconds, _, _ in done]
    steady = sum(3600.0 / _median_after_first(s) for s in epochs)  # trial-epochs per hour, side by side
    return {
        "trials": trials,
        "gpu_share": resources.get("GPU"),
        "loader_workers": workers,
        "path": args.packing_path,
        "epochs_per_trial": args.epochs,
        "wall_s": round(wall, 1),
        "images_per_s_per_trial": [[round(n_train / s, 1) for s in seconds] for seconds in epochs],
        "steady_trial_epochs_per_gpu_hour": round(steady, 1),
        "wall_trial_epochs_per_gpu_hour": round(trials * args.epochs * 3600.0 / wall, 1),
        "training_s": round(training, 1),
        "training_trial_epochs_per_gpu_hour": round(trials * args.epochs * 3600.0 / training, 1),
    }


def plain_amp(args, prepared: str) -> list[float]:
    """The reference: a textbook timm + torch.autocast(bf16) loop, channels_last, pinned memory. Images/s."""
    import timm
    from torch.utils.data import DataLoader

    from trainables.data.loader import Augment, ShardDataset, build_transforms
    from trainables.data.prepare import load_info

    info = load_info(prepared)
    model = timm.create_model(args.backbone, pretrained=False, num_classes=len(info["lesion_classes"]))
    data_cfg = timm.data.resolve_data_config({}, model=model)
    size = info["prepare_options"]["image_size"]
    transform = build_transforms(size, data_cfg["mean"], data_cfg["std"], True, Augment())
    model = model.cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = ShardDataset(prepared, "train", transform)
    loader = DataLoader(data, args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers, pin_memory=True)
    rates = []
    for _ in range(args.epochs):
        torch.cuda.synchronize()
        start, seen = time.perf_counter(), 0
        for images, lesion, _site in loader:
            images = images.cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(images).float(), lesion.cuda(non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(lesion)
        torch.cuda.synchronize()
        rates.append(round(seen / (time.perf_counter() - start), 1))
    return rates


def decode_breakdown(args, prepared: str, batches: int = 24) -> dict:
    """Where ``gpu_decode``'s time goes in the training process, median ms per batch: waiting for the loader,
    nvJPEG decoding and the batch augmentation (``launch``: until the call returns; ``done``: to a CUDA
    synchronisation), and the ceiling's step time beside it, for scale."""
    from torch.utils.data import DataLoader
    from torchvision.io import ImageReadMode, decode_jpeg

    from trainables.data.batch_augment import BatchAugment
    from trainables.data.loader import Augment, ShardDataset, build_transforms, collate_encoded, split_encoded
    from trainables.data.prepare import load_info

    size = load_info(prepared)["prepare_options"]["image_size"]
    augment = BatchAugment(build_transforms(size, (0.5,) * 3, (0.25,) * 3, True, Augment()), seed=0)
    data = ShardDataset(prepared, "train", encoded=True)
    loader = DataLoader(
        data,
        args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
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
        t = time.perf_counter()
        for data_, lengths, _lesion, _site in loader:
            t = clock("loader_wait", t)
            images = decode_jpeg(split_encoded(data_, lengths), mode=ImageReadMode.RGB, device="cuda")
            t = clock("decode_done", clock("decode_launch", t), sync=True)
            augment.batch(images)
            t = clock("augment_done", clock("augment_launch", t), sync=True)
            seen += 1
            if seen >= batches:
                break
    skip = 4  # warm-up: nvJPEG handles, loader start
    return {name: round(statistics.median(v[skip:]), 2) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    default_workers = max(1, min(10, (os.cpu_count() or 2) - 4))
    parser.add_argument("--workers", type=int, default=default_workers, help="DataLoader processes per loop")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--packing", default="1,2,4", help="trials per GPU to measure, comma-separated ('': none)")
    parser.add_argument("--packing-path", choices=["gpu_decode", "default"], default="gpu_decode")
    parser.add_argument("--plain", action="store_true", help="also the plain timm AMP loop (issue 8's reference)")
    parser.add_argument("--breakdown", action="store_true", help="also time gpu_decode's stages per batch")
    parser.add_argument("--skip-loops", action="store_true", help="only the ceiling and packing")
    parser.add_argument("--smoke", action="store_true", help="no GPU needed: every phase at tiny settings on the CPU")
    args = parser.parse_args()
    use_gpu = torch.cuda.is_available()
    if args.smoke:
        args.n, args.image_size, args.batch_size, args.epochs, args.workers = 96, 32, 8, 2, 0
        args.backbone, args.breakdown, args.plain = "test_efficientnet", False, False
        use_gpu = False
    elif not use_gpu:
        print("bench_gpu: no CUDA device on this machine; nothing measured (run it on a GPU node, or --smoke)")
        return
    device = torch.device("cuda" if use_gpu else "cpu")
    import ray

    from trainables.data.prepare import PrepareOptions, load_info, prepare

    raw = synthetic(args.n, args.image_size)
    prepared = str(raw.parent / f"{raw.name}-prepared")
    if not os.path.exists(os.path.join(prepared, "dataset.json")):
        prepare(PrepareOptions(format="isic2019", root=str(raw), image_size=args.image_size), prepared, progress=False)
    n_train = sum(s["rows"] for s in load_info(prepared)["shards"] if s["split"] == "train")
    result: dict = {"settings": vars(args), "smoke": args.smoke, "n_train": n_train, "gpu_util_pct": {}}
    util = result["gpu_util_pct"]

    with Utilisation() as u:
        result["ceiling"] = ceiling(args, prepared, device)
    util["ceiling"] = u.mean
    print("ceiling", result["ceiling"], flush=True)
    top = result["ceiling"]["images_per_s"]
    if args.breakdown:
        result["breakdown_ms_per_batch"] = decode_breakdown(args, prepared)
        print("gpu_decode ms per batch:", result["breakdown_ms_per_batch"], flush=True)
    if args.plain:
        with Utilisation() as u:
            result["plain_images_per_s"] = plain_amp(args, prepared)
        util["plain"] = u.mean
    ray.init(include_dashboard=False, num_cpus=os.cpu_count() if not args.smoke else max(4, os.cpu_count() or 1))
    try:
        with tempfile.TemporaryDirectory() as storage:
            for path, decode in (("default", False), ("gpu_decode", True)):
                if args.skip_loops:
                    break
                with Utilisation() as u:
                    rates = skintune_loop(args, prepared, n_train, decode, storage, use_gpu)
                util[path] = u.mean
                result[f"{path}_images_per_s"] = rates
                result[f"{path}_vs_ceiling"] = round(_median_after_first(rates) / top, 3)
                print(path, rates, flush=True)
            packed = {}
            for trials in [int(t) for t in args.packing.split(",") if t]:
                with Utilisation() as u:
                    packed[str(trials)] = packing(args, prepared, n_train, trials, storage, use_gpu)
                util[f"packing_{trials}"] = u.mean
                print("packing", packed[str(trials)], flush=True)
            result["packing"] = packed
    finally:
        ray.shutdown()
    if "plain_images_per_s" in result and "gpu_decode_images_per_s" in result:
        plain = _median_after_first(result["plain_images_per_s"])
        result["gpu_decode_vs_plain"] = round(_median_after_first(result["gpu_decode_images_per_s"]) / plain, 3)
    one = result["packing"].get("1")
    for k, entry in result["packing"].items():
        if one and k != "1":
            for kind in ("training", "steady", "wall"):
                ratio = entry[f"{kind}_trial_epochs_per_gpu_hour"] / one[f"{kind}_trial_epochs_per_gpu_hour"]
                result[f"packing_{k}_vs_1{'' if kind == 'training' else '_' + kind}"] = round(ratio, 3)
    result["goals"] = {
        "gpu_decode_vs_ceiling": f">= {GOAL_DECODE_VS_CEILING}",
        "packing_4_vs_1": f">= {GOAL_PACKING_4_VS_1}",
    }
    write_result("gpu_smoke" if args.smoke else "gpu", result)
    print(result)


if __name__ == "__main__":
    main()
