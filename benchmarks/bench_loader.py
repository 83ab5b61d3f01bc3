"""Loader benchmark: images/second from prepared shards vs decoding the original JPEGs every epoch.

ISIC-sized originals (1024x768 JPEGs, made from the synthetic generator's images, upscaled with noise so they do
not compress unrealistically well), 224 px output, the same transforms and the same number of DataLoader workers
on both sides. Goal (issue 2): shards at least 5x faster. Measured with the training augmentation (the same on both
sides, so its cost caps the ratio), without augmentation (what preparing the shards alone saves), and with the
plain torchvision v2 pipeline that the training augmentation reproduces faster (``train_aug_v2``: the figure before
issue 8).

    python -m benchmarks.bench_loader [--n 256] [--workers 2] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from benchmarks.common import timed, write_result
from trainables.data.augment import reference_pipeline
from trainables.data.images import load_rgb, resize_shorter_side
from trainables.data.loader import Augment, ShardDataset, build_transforms
from trainables.data.prepare import PrepareOptions, prepare
from trainables.data.synthetic import generate

SIZE = 224


class JpegDataset(Dataset):
    """The baseline: decode and resize the original file on every access, as a naive pipeline does."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = resize_shorter_side(load_rgb(self.paths[i]), SIZE)
        return self.transform(v2.functional.pil_to_tensor(img)), 0, 0


def _make_originals(root: Path, n: int) -> None:
    generate(root, n=n, image_size=128, seed=0, progress=False)
    rng = np.random.default_rng(0)
    for path in sorted((root / "ISIC_2019_Training_Input").glob("*.jpg")):
        big = np.asarray(Image.open(path).convert("RGB").resize((1024, 768), Image.Resampling.BICUBIC), np.float32)
        big += rng.normal(0, 6, big.shape)
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, quality=92)


def _throughput(dataset: Dataset, workers: int, epochs: int) -> float:
    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    next(iter(loader))  # start the worker processes outside the timing
    seconds, _ = timed(lambda: [None for _ in range(epochs) for _batch in loader])
    return epochs * len(dataset) / seconds


def _transforms() -> dict:
    aug = Augment()
    plain = reference_pipeline(
        size=SIZE, crop_scale_min=aug.crop_scale_min, flips=aug.flips, rotation=aug.rotation, strength=aug.strength
    )
    return {
        "train_aug": build_transforms(SIZE, (0.5,) * 3, (0.5,) * 3, train=True),
        "no_aug": build_transforms(SIZE, (0.5,) * 3, (0.5,) * 3, train=False),
        "train_aug_v2": v2.Compose([plain, v2.Normalize([0.5] * 3, [0.5] * 3)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side; the median counts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp, "orig"), Path(tmp, "prepared")
        _make_originals(root, args.n)
        opts = PrepareOptions(format="isic2019", root=str(root), image_size=SIZE, val_fraction=0.0, test_fraction=0.0)
        prepare_s, _ = timed(prepare, opts, out, progress=False)
        paths = sorted((root / "ISIC_2019_Training_Input").glob("*.jpg"))
        rates = {}
        for mode, transform in _transforms().items():
            sides = (ShardDataset(out, "train", transform), JpegDataset(paths, transform))
            # both sides measured in turn, `repeats` times; the median of each damps other jobs on the machine
            runs = [[_throughput(d, args.workers, args.epochs) for d in sides] for _ in range(args.repeats)]
            rates[mode] = tuple(statistics.median(r[k] for r in runs) for k in (0, 1))
    result = {
        "images": args.n,
        "loader_workers": args.workers,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "original_size": [1024, 768],
        "output_size": SIZE,
        "prepare_seconds": round(prepare_s, 2),
        **{f"{mode}_shards_images_per_s": round(r[0], 1) for mode, r in rates.items()},
        **{f"{mode}_jpeg_images_per_s": round(r[1], 1) for mode, r in rates.items()},
        **{f"{mode}_speedup": round(r[0] / r[1], 2) for mode, r in rates.items()},
        "goal_speedup": 5.0,
    }
    write_result("loader", result)
    print(result)


if __name__ == "__main__":
    main()
