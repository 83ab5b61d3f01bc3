"""synth -> prepare -> loader round trip: the worker-side Dataset over real shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from trainables.data.loader import Augment, ShardDataset, build_transforms, make_loader


def test_round_trip_matches_dataset_json(smoke_data):
    raw, prepared = smoke_data
    info = json.loads(Path(prepared, "dataset.json").read_text())
    n_raw = len(list(Path(raw, "ISIC_2019_Training_Input").glob("*.jpg")))
    assert info["images"] == n_raw
    size = info["prepare_options"]["image_size"]
    for split in ("train", "val", "test"):
        data = ShardDataset(prepared, split, build_transforms(size, (0.5,) * 3, (0.5,) * 3, train=False))
        assert len(data) == info["counts"][split]["images"]
        assert (data.site == -1).sum() == info["counts"][split]["site_missing"]
        image, lesion, site = data[0]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert image.min() >= -1.0 and image.max() <= 1.0  # mean = std = 0.5 normalisation
        assert 0 <= lesion < len(info["lesion_classes"]) and -1 <= site < len(info["site_classes"])
        assert len(set(data.image_ids)) == len(data)


def test_training_augmentation_is_random_but_seeded(smoke_data):
    _, prepared = smoke_data
    transform = build_transforms(40, (0.5,) * 3, (0.5,) * 3, train=True, augment=Augment(strength=0.8))
    data = ShardDataset(prepared, "train", transform)
    torch.manual_seed(0)
    a = data[3][0]
    torch.manual_seed(0)
    b = data[3][0]
    c = data[3][0]
    assert a.shape == (3, 40, 40)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loader_batches_with_worker_processes(smoke_data):
    _, prepared = smoke_data
    data = ShardDataset(prepared, "val", build_transforms(32, (0.5,) * 3, (0.5,) * 3, train=False), limit=20)
    batches = list(make_loader(data, batch_size=8, train=False, num_workers=2))
    images, lesion, site = batches[0]
    assert images.shape == (8, 3, 32, 32) and lesion.dtype == torch.int64 and site.dtype == torch.int64
    assert sum(len(b[1]) for b in batches) == 20


def test_distributed_sampler_shards_ranks_disjointly(smoke_data):
    _, prepared = smoke_data
    data = ShardDataset(prepared, "train", build_transforms(32, (0.5,) * 3, (0.5,) * 3, train=False))
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=7, drop_last=True)
        sampler.set_epoch(0)
        seen.append(set(iter(sampler)))
        assert len(list(DataLoader(data, batch_size=16, sampler=sampler))) == pytest.approx(len(sampler) / 16, abs=1)
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) >= len(data) - 1


@pytest.mark.parametrize("train", [True, False])
def test_device_decoded_batches_equal_the_loader_worker_path(smoke_data, train):
    """train.gpu_decode's loader (a batch's JPEG bytes collated into one buffer, decoded and transformed per batch on a
    device: nvJPEG on a GPU) gives the same batches as decoding in the Dataset; here on the CPU device, the one a test
    machine has."""
    from trainables.data.loader import DeviceDecoded, collate_encoded

    _, prepared = smoke_data
    transform = build_transforms(40, (0.5,) * 3, (0.5,) * 3, train=train, augment=Augment(strength=0.8))
    plain = DataLoader(ShardDataset(prepared, "train", transform), batch_size=8)
    encoded = ShardDataset(prepared, "train", encoded=True)
    device = DeviceDecoded(DataLoader(encoded, batch_size=8, collate_fn=collate_encoded), transform, "cpu")
    assert len(device) == len(plain) and device.batch_size == 8  # the wrapped loader's attributes
    torch.manual_seed(0)
    expected = list(plain)
    torch.manual_seed(0)  # the same random draws, in the same order (image by image)
    got = list(device)
    assert len(got) == len(expected) > 1
    for (a, la, sa), (b, lb, sb) in zip(expected, got, strict=True):
        assert b.shape == a.shape == (len(la), 3, 40, 40) and b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        assert torch.equal(la, lb) and torch.equal(sa, sb)
