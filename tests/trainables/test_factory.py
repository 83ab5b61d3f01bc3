"""build_parts: the one factory from a TrainConfig and a dataset description to a network, transforms and loss."""

from __future__ import annotations

import pytest
import torch

from trainables.config import TrainConfig
from trainables.data.augment import TrainAugment
from trainables.errors import UserError
from trainables.factory import build_parts
from trainables.pretrained import RANDOM_INIT, data_config

TINY = "test_efficientnet"
INFO = {
    "lesion_classes": ["MEL", "NV", "BCC", "AK"],
    "site_classes": ["torso", "head/neck", "palms/soles"],
    "prepare_options": {"image_size": 48, "quality": 90},
    "counts": {"train": {"lesion": {"MEL": 10, "NV": 70, "BCC": 15, "AK": 5}}},
}


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(backbone=TINY, pretrained=False, **kw)


def test_heads_image_size_and_normalisation_come_from_config_and_info():
    parts = build_parts(_cfg(dropout=0.3), INFO)
    assert parts.model.lesion_head.out_features == 4 and parts.model.site_head.out_features == 3
    assert parts.model.dropout.p == 0.3 and parts.model.weights_source == RANDOM_INIT
    assert parts.image_size == 48  # no image_size in the config: the prepared size
    norm = data_config(TINY)
    assert parts.mean == tuple(norm["mean"]) and parts.std == tuple(norm["std"])
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    assert parts.eval_transform(image).shape == (3, 48, 48)
    assert parts.loss is None  # only on request
    assert build_parts(_cfg(image_size=32), INFO).image_size == 32  # the config's own size wins


def test_single_task_config_or_no_site_classes_give_no_site_head():
    assert build_parts(_cfg(multitask=False), INFO).model.site_head is None
    assert build_parts(_cfg(), {**INFO, "site_classes": []}).model.site_head is None


def test_without_any_image_size_it_says_what_to_set():
    info = {k: v for k, v in INFO.items() if k != "prepare_options"}
    with pytest.raises(UserError, match="image_size"):
        build_parts(_cfg(), info)
    assert build_parts(_cfg(image_size=40), info).image_size == 40


def test_loss_follows_the_config_with_training_class_weights():
    parts = build_parts(_cfg(lesion_loss="weighted_ce", loss_weighting="uncertainty"), INFO, with_loss=True)
    weight = parts.loss.lesion_loss.weight
    assert weight is not None and weight.argmax() == 3 and weight.argmin() == 1  # rarest AK, commonest NV
    assert weight.mean().item() == pytest.approx(1.0)
    assert parts.loss.log_vars is not None  # learned task weights
    single = build_parts(_cfg(multitask=False), INFO, with_loss=True).loss
    assert not single.multitask and single.lesion_loss.weight is None


def test_train_transform_takes_the_augmentation_settings():
    parts = build_parts(_cfg(aug_strength=0.25, crop_scale_min=0.4, hflip=False, rotation=30.0), INFO)
    aug = parts.train_transform()
    assert isinstance(aug, TrainAugment)
    assert (aug.size, aug.crop.scale, aug.flips, aug.rotation, aug.strength) == (48, (0.4, 1.0), False, 30.0, 0.25)
    assert (parts.augment.flips, parts.augment.strength) == (False, 0.25)
    assert aug(torch.randint(0, 256, (3, 60, 60), dtype=torch.uint8)).shape == (3, 48, 48)


def test_same_seed_same_network():
    torch.manual_seed(0)
    first = build_parts(_cfg(), INFO).model.state_dict()
    torch.manual_seed(0)
    second = build_parts(_cfg(), INFO).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
