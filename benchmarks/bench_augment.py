"""CPU micro-benchmark of the training augmentation of one batch: image by image (the loader workers' path,
``TrainAugment.__call__``), ``TrainAugment.batch`` (gpu_decode's path before issue 20: per-image draws, steps
grouped per batch), ``BatchAugment`` (gpu_decode's path now: batched draws and steps) and, where it is
importable, kornia's batched augmentation (not a skintune dependency: install it to compare).

On a GPU the cost of a step is mostly the CPU issuing its kernels, so besides the time on CPU tensors this
counts the aten operations one batch runs (each is a kernel launch or more on a GPU), which carries over to a
GPU unchanged. Timings are the fastest of ``--repeats`` batches after one warm-up batch (the median beside it),
on CPU tensors, one thread: on a GPU the batched paths gain more (launch-bound), the image-by-image path less.

    python -m benchmarks.bench_augment [--batch-size 32] [--image-size 224] [--repeats 7]

Writes ``augment.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import write_result
from trainables.data.augment import TrainAugment
from trainables.data.batch_augment import BatchAugment


class CountOps(TorchDispatchMode):
    """Counts the aten operations run while active: all of them, and those on image-sized tensors (an input or
    output of at least ``large`` elements), which on a GPU are the kernels (a batch's random draws and parameter
    arithmetic stay on the CPU in every path)."""

    def __init__(self, large: int = 4096):
        super().__init__()
        self.count, self.image_ops, self.large = 0, 0, large

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += 1
        tensors = [*args, *(kwargs or {}).values(), *(out if isinstance(out, (tuple, list)) else [out])]
        flat = [t for item in tensors for t in (item if isinstance(item, (tuple, list)) else [item])]
        if any(isinstance(t, torch.Tensor) and t.numel() >= self.large for t in flat):
            self.image_ops += 1
        return out


def _images(n: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """Prepared-shard-like images: shorter side ``size``, 4:3, half landscape and half portrait."""
    g = torch.Generator().manual_seed(seed)
    long = round(size * 4 / 3)
    shapes = [(size, long) if b % 2 == 0 else (long, size) for b in range(n)]
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in shapes]


def _kornia(settings: TrainAugment, mean, std):
    """kornia's nearest equivalent, or None where kornia is not installed. It differs in what it draws:
    RandAugment's operations are chosen once per call for the whole batch (without replacement), ColorJitter's
    order once per call, and it takes a batch of one image size only."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    s = settings.strength
    return K.AugmentationSequential(
        K.RandomResizedCrop((settings.size, settings.size), scale=settings.crop.scale),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
        K.RandomRotation(settings.rotation, p=1.0),
        K.ColorJitter(0.3 * s, 0.3 * s, 0.3 * s, 0.0, p=1.0),
        K.auto.RandAugment(n=2, m=max(1, round(9 * s))),
        K.Normalize(torch.tensor(mean), torch.tensor(std)),
    )


def measure(fn, repeats: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    with CountOps() as ops:
        fn()
    return {
        "ms_per_batch": round(min(times) * 1e3, 1),  # the least disturbed batch (a shared machine)
        "ms_per_batch_median": round(statistics.median(times) * 1e3, 1),
        "aten_ops_per_batch": ops.count,
        "image_sized_ops_per_batch": ops.image_ops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the loader workers use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    settings = TrainAugment(
        size=args.image_size, crop_scale_min=0.6, flips=True, rotation=180.0, strength=0.5, mean=mean, std=std
    )
    images = _images(args.batch_size, args.image_size)
    batched = BatchAugment(settings, seed=0)
    paths = {
        "per_image": lambda: torch.stack([settings(image) for image in images]),
        "train_augment_batch": lambda: settings.batch(images),
        "batch_augment": lambda: batched.batch(images),
    }
    kornia = _kornia(settings, mean, std)
    same_size = torch.stack([image for image in images if image.shape == images[0].shape])
    if kornia is not None:  # one image size (kornia's limit): the landscape half, as float in [0, 1]
        paths["kornia_same_size_half"] = lambda: kornia(same_size.float().div_(255.0))
        paths["batch_augment_same_size_half"] = lambda: batched.batch(same_size)
    result: dict = {"settings": vars(args), "kornia": None}
    if kornia is not None:
        import kornia as kornia_module

        result["kornia"] = kornia_module.__version__
    for name, fn in paths.items():
        result[name] = measure(fn, args.repeats)
        print(name, result[name], flush=True)
    per, fast = result["per_image"], result["batch_augment"]
    result["speedup_batch_augment_vs_per_image"] = round(per["ms_per_batch"] / fast["ms_per_batch"], 2)
    # aten operations per batch (all, and on image-sized tensors: the kernels on a GPU), image by image / batched
    result["ops_ratio"] = round(per["aten_ops_per_batch"] / fast["aten_ops_per_batch"], 1)
    result["image_ops_ratio"] = round(per["image_sized_ops_per_batch"] / fast["image_sized_ops_per_batch"], 1)
    if kornia is not None:
        k, b = result["kornia_same_size_half"], result["batch_augment_same_size_half"]
        result["kornia_vs_batch_augment_time"] = round(k["ms_per_batch"] / b["ms_per_batch"], 2)
    write_result("augment", result)


if __name__ == "__main__":
    main()
