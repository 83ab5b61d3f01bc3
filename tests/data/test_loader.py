"""synth -> prepare -> loader round trip: the worker-side Dataset over real shards."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
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


def test_patient_metadata_read_with_the_split(smoke_data):
    """The synthetic default has age and sex: ShardDataset reads them (NaN / -1 where missing), at the rates that
    dataset.json reports."""
    _, prepared = smoke_data
    info = json.loads(Path(prepared, "dataset.json").read_text())
    for split in ("train", "val", "test"):
        data = ShardDataset(prepared, split)
        assert data.age.dtype == np.float32 and data.sex.dtype == np.int64 and len(data.age) == len(data)
        known = data.age[~np.isnan(data.age)]
        assert known.size and (known % 5 == 0).all() and set(np.unique(data.sex)) <= {-1, 0, 1}
        rates = {"age": np.isnan(data.age).mean(), "sex": (data.sex == -1).mean(), "site": (data.site == -1).mean()}
        for name, rate in rates.items():
            assert info["metadata"][name]["present"]
            assert info["metadata"][name]["missing_rate_by_split"][split] == pytest.approx(rate)
    assert ShardDataset(prepared, "val", limit=5).age.shape == (5,)


def test_a_folder_prepared_before_patient_metadata_still_loads(smoke_data, tmp_path):
    """Shards without the age and sex columns and a dataset.json without ``metadata`` (as prepared before they
    existed) load as before: every item the same, age and sex all missing."""
    _, prepared = smoke_data
    old = tmp_path / "old"
    shutil.copytree(prepared, old)
    info = json.loads((old / "dataset.json").read_text())
    del info["metadata"]
    (old / "dataset.json").write_text(json.dumps(info))
    for shard in info["shards"]:
        table = pq.read_table(old / shard["file"])
        pq.write_table(table.drop_columns(["age", "sex"]), old / shard["file"])
        assert "age" not in pq.read_schema(old / shard["file"]).names
    transform = build_transforms(32, (0.5,) * 3, (0.5,) * 3, train=False)
    for split in ("train", "val", "test"):
        before, after = ShardDataset(prepared, split, transform), ShardDataset(old, split, transform)
        assert np.isnan(after.age).all() and (after.sex == -1).all() and len(after) == len(before)
        assert after.image_ids == before.image_ids and (after.lesion == before.lesion).all()
        image, lesion, site = after[0]
        assert torch.equal(image, before[0][0]) and (lesion, site) == before[0][1:]
    batch = next(iter(make_loader(ShardDataset(old, "train", transform), batch_size=4, train=True)))
    assert batch[0].shape == (4, 3, 32, 32)


def test_items_with_meta_carry_the_raw_codes_on_both_loader_paths(smoke_data):
    """``with_meta``: items end with the image's raw [site, age, sex] codes (NaN / -1 = missing); the gpu_decode
    path (here on the CPU device) yields the same 4-tuples as the plain one; without it items stay 3-tuples."""
    from trainables.data.loader import DeviceDecoded, collate_encoded

    _, prepared = smoke_data
    transform = build_transforms(32, (0.5,) * 3, (0.5,) * 3, train=False)
    data = ShardDataset(prepared, "train", transform, with_meta=True)
    image, lesion, site, meta = data[3]
    assert meta.dtype == torch.float32 and meta.shape == (3,) and site == data.site[3] and lesion == data.lesion[3]
    assert meta[0] == data.site[3] and meta[2] == data.sex[3]
    assert (math.isnan(meta[1]) and math.isnan(data.age[3])) or meta[1] == data.age[3]
    assert len(ShardDataset(prepared, "train", transform)[3]) == 3
    assert np.isnan(data.meta[:, 1]).any() and (data.meta[:, 2] == -1).any()  # missing values come through
    plain = list(DataLoader(data, batch_size=8))
    encoded = ShardDataset(prepared, "train", encoded=True, with_meta=True)
    device = list(DeviceDecoded(DataLoader(encoded, batch_size=8, collate_fn=collate_encoded), transform, "cpu"))
    assert len(plain) == len(device) > 1
    for a, b in zip(plain, device, strict=True):
        assert len(a) == len(b) == 4 and a[3].shape == (len(a[1]), 3)
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
        torch.testing.assert_close(a[3], b[3], rtol=0, atol=0, equal_nan=True)
