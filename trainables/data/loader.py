"""Worker-side data: a map-style ``Dataset`` over the prepared shards of one split, and its transforms.

The split's encoded JPEG bytes stay in one Arrow buffer (a few KB per image at 64-224 px, no Python object per
image, shared copy-on-write with DataLoader worker processes). Each item is decoded with libjpeg-turbo
(``torchvision.io.decode_jpeg``) and augmented on tensors (``trainables.data.augment``, built on
``torchvision.transforms.v2``). The Train loop (``trainables/train_loop.py``) shards it across DDP ranks itself:
the training split with a ``DistributedSampler`` seeded by the run's seed (``prepare_data_loader`` gets
``add_dist_sampler=False`` and only moves batches to the device), the validation split with
``trainables.evaluate.rank_slice`` (a disjoint slice per rank, gathered for exact metrics).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from trainables.data.augment import TrainAugment
from trainables.data.prepare import load_info
from trainables.errors import UserError
from trainables.metadata import raw_metadata

# torchvision 0.29 deprecates its JPEG codec in favour of TorchCodec, which needs FFmpeg's libraries; the codec
# still works (libjpeg-turbo) and is the fastest option here, so only this one warning is silenced.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
# ShardDataset.jpeg: decode_jpeg only reads the read-only Arrow buffer it is given
warnings.filterwarnings("ignore", message="The given buffer is not writable")


@dataclass(frozen=True, kw_only=True)
class Augment:
    """Training augmentation settings, named as :class:`TrainAugment`'s arguments; ``strength`` in [0, 1] scales
    colour jitter and the RandAugment magnitude; ``flips``: random horizontal and vertical flips
    (``train.hflip``)."""

    strength: float = 0.5
    crop_scale_min: float = 0.6
    flips: bool = True
    rotation: float = 180.0  # dermoscopy has no "up": any rotation is a valid view


def build_transforms(image_size: int, mean, std, train: bool, augment: Augment | None = None):
    """uint8 CHW tensor -> normalised float tensor of ``image_size`` x ``image_size``.

    Training: :class:`trainables.data.augment.TrainAugment`, the v2 pipeline RandomResizedCrop -> flips ->
    RandomRotation -> ColorJitter (no hue: lesion colour is diagnostic) -> RandAugment -> Normalize, made ~3x
    faster with the same random draws and statistics.
    """
    if not train:
        resize = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
        return v2.Compose([*resize, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    aug = augment or Augment()
    return TrainAugment(
        size=image_size,
        crop_scale_min=aug.crop_scale_min,
        flips=aug.flips,
        rotation=aug.rotation,
        strength=aug.strength,
        mean=mean,
        std=std,
    )


class ShardDataset(Dataset):
    """Images of one split of a prepared dataset; items are ``(image, lesion, site)``, and with ``with_meta``
    ``(image, lesion, site, meta)``: ``meta`` the image's raw patient codes, a float32 tensor ``[site, age, sex]``
    (-1 / NaN / -1 = missing; :mod:`trainables.metadata`), what a network with ``metadata_inputs`` takes."""

    def __init__(
        self,
        prepared: str | Path,
        split: str,
        transform=None,
        limit: int | None = None,
        encoded: bool = False,
        with_meta: bool = False,
    ):
        self.info = load_info(prepared)
        files = [Path(prepared).expanduser() / s["file"] for s in self.info["shards"] if s["split"] == split]
        if not files:
            raise UserError(f"{prepared}: no shards for split {split!r}; rerun `skintune prepare`")
        patient = [c for c in ("age", "sex") if c in pq.read_schema(files[0]).names]  # none in older shards
        table = pa.concat_tables(
            pq.read_table(f, columns=["image_id", "group_id", "image", "lesion", "site", *patient]) for f in files
        ).combine_chunks()
        if limit is not None:
            table = table.slice(0, limit)
        self.images = table.column("image").chunk(0) if table.num_rows else pa.array([], pa.binary())
        self.lesion = table.column("lesion").to_numpy().astype(np.int64)
        self.site = table.column("site").to_numpy().astype(np.int64)
        n = table.num_rows  # patient metadata (trainables/data/schema.py): NaN / -1 = missing, as in older shards
        self.age = (
            table.column("age").to_numpy().astype(np.float32) if "age" in patient else np.full(n, np.nan, np.float32)
        )
        self.sex = table.column("sex").to_numpy().astype(np.int64) if "sex" in patient else np.full(n, -1, np.int64)
        self.meta = raw_metadata(self.site, self.age, self.sex)  # (n, 3) float32: the items' ``meta``
        self.with_meta = with_meta
        self.image_ids = table.column("image_id").to_pylist()
        self.group_ids = table.column("group_id").to_pylist()  # the lesion (or patient): the statistics' unit
        self.transform = transform
        self.split = split
        self.encoded = encoded  # items hold the JPEG bytes (a uint8 tensor), decoded later: see DeviceDecoded

    def __len__(self) -> int:
        return len(self.lesion)

    def jpeg(self, index: int) -> torch.Tensor:
        """The encoded image (uint8, a read-only view of the Arrow buffer: no copy).

        Through a memoryview: pyarrow < 26 refuses the writable request that ``torch.frombuffer`` makes first
        ("could not retrieve buffer from object"); the memoryview lets torch fall back to a read-only view.
        """
        return torch.frombuffer(memoryview(self.images[index].as_buffer()), dtype=torch.uint8)

    def decode(self, index: int) -> torch.Tensor:
        return decode_jpeg(self.jpeg(index), mode=ImageReadMode.RGB)

    def __getitem__(self, index: int):
        if self.encoded:
            return self.jpeg(index), *self.labels(index)
        image = self.decode(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, *self.labels(index)

    def labels(self, index: int) -> tuple:
        """``(lesion, site)``, and the raw metadata codes as a third element with ``with_meta``."""
        if self.with_meta:
            return int(self.lesion[index]), int(self.site[index]), torch.from_numpy(self.meta[index])
        return int(self.lesion[index]), int(self.site[index])


def collate_encoded(batch: list) -> tuple[torch.Tensor, ...]:
    """DataLoader ``collate_fn`` for ``ShardDataset(encoded=True)``: the batch's JPEGs end to end in one uint8 tensor,
    with their lengths (:func:`split_encoded` takes them apart). One tensor crosses from a loader worker, not one per
    image: each tensor sent is a shared-memory file of its own, and 128 of them cost the training process ~25 ms
    a batch to receive (1.7 ms as one, measured on 2 cores); the pinned-memory thread then pins one buffer too.
    Returns ``(data, lengths, lesion, site)``, and the items' ``meta`` stacked after them where they have one."""
    encoded, lesion, site, *meta = zip(*batch, strict=True)
    lengths = torch.tensor([len(e) for e in encoded])
    return torch.cat(encoded), lengths, torch.tensor(lesion), torch.tensor(site), *(torch.stack(m) for m in meta)


def split_encoded(data: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """The JPEGs of a :func:`collate_encoded` batch, as views of its buffer (no copy)."""
    return list(torch.split(data, lengths.tolist()))


class DeviceDecoded:
    """Wraps a DataLoader of encoded batches (``ShardDataset(encoded=True)`` with :func:`collate_encoded`) and yields
    ``(images, lesion, site)`` on ``device`` (and ``meta`` where the items have it: the plain loader's tuple): each
    batch's JPEGs decoded there in one call (nvJPEG on a GPU, ``torchvision.io.decode_jpeg(device=...)``), then
    transformed there a batch at a time (:meth:`transform_batch`; for training, :func:`batched`'s
    :class:`~trainables.data.batch_augment.BatchAugment`). The option ``train.gpu_decode`` moves decoding and
    augmentation off the CPU cores, for a GPU they cannot keep busy. On a CUDA device the next batch is decoded and
    augmented on a side stream while the caller trains on the current one (:meth:`_prefetched`).
    Anything else (``len``, ``sampler``) is the wrapped loader's."""

    def __init__(self, loader: DataLoader, transform, device: torch.device, prefetch: bool = True):
        self.loader, self.transform, self.device = loader, transform, torch.device(device)
        self.prefetch = prefetch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __iter__(self):
        if hasattr(self.transform, "reseed"):  # a new stream of draws each epoch, from torch's global generator
            self.transform.reseed(int(torch.randint(2**62, ())))
        if self.prefetch and self.device.type == "cuda":
            yield from self._prefetched()
            return
        for data, lengths, *labels in self.loader:
            yield self._prepare(data, lengths, labels)

    def _prepare(self, data: torch.Tensor, lengths: torch.Tensor, labels: list[torch.Tensor]) -> tuple:
        images = decode_jpeg(split_encoded(data, lengths), mode=ImageReadMode.RGB, device=self.device)
        return self.transform_batch(images), *(t.to(self.device, non_blocking=True) for t in labels)

    def _prefetched(self):
        """CUDA only (not run by the CPU tests): batch i + 1 is issued on a side stream before batch i is handed
        over, so the GPU decodes and augments it while the caller's training step on batch i runs; the caller's
        stream waits for the side stream's work on a batch before using it, and the batch's memory is marked as
        used by the caller's stream (``record_stream``) so the allocator does not reuse it early."""
        side = torch.cuda.Stream(device=self.device)
        main = torch.cuda.current_stream(self.device)
        batches = iter(self.loader)

        def issue():
            batch = next(batches, None)
            if batch is None:
                return None
            data, lengths, *labels = batch
            with torch.cuda.stream(side):
                return self._prepare(data, lengths, labels)

        ahead = issue()
        while ahead is not None:
            main.wait_stream(side)
            for tensor in ahead:
                tensor.record_stream(main)
            current, ahead = ahead, issue()
            yield current

    def transform_batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        """One call per step for the whole batch: :meth:`TrainAugment.batch` for training; the evaluation
        transforms (torchvision v2, which take a batch) on the stacked images when they share a size."""
        if self.transform is None:
            return torch.stack(images)
        if hasattr(self.transform, "batch"):
            return self.transform.batch(images)
        if len({image.shape for image in images}) == 1:
            return self.transform(torch.stack(images))
        return torch.stack([self.transform(image) for image in images])


def batched(transform):
    """The transform :class:`DeviceDecoded` applies to a training batch on a GPU: a :class:`TrainAugment` becomes
    its :class:`~trainables.data.batch_augment.BatchAugment` (a fixed number of batched tensor operations, the same
    distributions); any other transform is kept."""
    from trainables.data.batch_augment import BatchAugment

    return BatchAugment(transform) if isinstance(transform, TrainAugment) else transform


def make_loader(
    dataset: ShardDataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A plain single-process DataLoader (tests); the Train loop builds its own, with a DistributedSampler."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
