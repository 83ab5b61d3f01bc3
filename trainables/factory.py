"""One factory from a training config to a run's parts: the network, its input transforms and its loss.

Training (:func:`trainables.train_loop.setup`), checkpoint evaluation (:func:`trainables.evaluate.evaluate_checkpoint`),
export (``tuner.export``) and predict (``tuner.predict``) all build their model with :func:`build_parts`, so the
head sizes, the image size, the normalisation and the augmentation settings are worked out in one place.

``info`` is the prepared dataset's ``dataset.json`` (:func:`trainables.data.prepare.load_info`), or the part of it
that a checkpoint or an export bundle records: ``lesion_classes``, ``site_classes`` and, where the config sets no
``image_size``, ``prepare_options.image_size``; a loss also needs the training split's ``counts``.

Inputs beyond the image (body site, age, sex: ``cfg.metadata_inputs``, fused with the image features before the
lesion head) are set up here too: ``info["site_classes"]`` gives the site one-hot's width, :func:`build_parts` hands
both to the network, and :attr:`ModelParts.metadata_inputs` says what the loaders and the export bundle need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from trainables.config import TrainConfig
from trainables.data.loader import Augment, build_transforms
from trainables.errors import UserError
from trainables.losses import MultiTaskLoss, make_loss
from trainables.model import MultiTaskNet, build_model
from trainables.pretrained import data_config


@dataclass
class ModelParts:
    """What :func:`build_parts` makes from one config."""

    model: MultiTaskNet
    image_size: int  # the network's input: ``cfg.image_size``, or the prepared image size
    mean: tuple[float, ...]  # input normalisation of the backbone's pretrained weights
    std: tuple[float, ...]
    augment: Augment  # the config's training augmentation
    eval_transform: Callable  # uint8 CHW image -> normalised float input (validation, test, predict)
    loss: MultiTaskLoss | None  # None unless asked for (``with_loss``)
    metadata_inputs: tuple[str, ...] = ()  # the metadata the network takes besides the image (site, age, sex order)

    def train_transform(self) -> Callable:
        """The training transform: :attr:`augment` at :attr:`image_size`, normalised as :attr:`eval_transform`."""
        return build_transforms(self.image_size, self.mean, self.std, train=True, augment=self.augment)


def build_parts(
    cfg: TrainConfig, info: Mapping, *, pretrained_weights: bool = False, with_loss: bool = False
) -> ModelParts:
    """The network, transforms and (with ``with_loss``) loss of ``cfg`` on the dataset that ``info`` describes.

    ``pretrained_weights``: initialise the backbone as ``cfg.pretrained`` / ``cfg.weights_file`` say (a new
    training run); by default it is randomly initialised, for weights loaded from a checkpoint or bundle next.
    The site head exists when ``cfg.multitask`` and ``info`` lists site classes. Raises :class:`UserError` when
    neither ``cfg`` nor ``info`` gives the image size.
    """
    image_size = cfg.image_size or (info.get("prepare_options") or {}).get("image_size")
    if not image_size:
        raise UserError(
            "the training config sets no image_size and no dataset.json was found to take the prepared size from; "
            "set train.image_size or keep the prepared dataset beside the checkpoint"
        )
    model = build_model(
        cfg.backbone,
        pretrained=pretrained_weights and cfg.pretrained,
        num_lesion_classes=len(info["lesion_classes"]),
        num_site_classes=len(info["site_classes"]) if cfg.multitask else 0,
        dropout=cfg.dropout,
        weights_file=cfg.weights_file,
        metadata_inputs=cfg.metadata_inputs,
        num_sites=len(info["site_classes"]),
        fusion_width=cfg.fusion_width,
    )
    norm = data_config(cfg.backbone)
    mean, std = tuple(norm["mean"]), tuple(norm["std"])
    augment = Augment(
        strength=cfg.aug_strength, crop_scale_min=cfg.crop_scale_min, flips=cfg.hflip, rotation=cfg.rotation
    )
    return ModelParts(
        model=model,
        image_size=int(image_size),
        mean=mean,
        std=std,
        augment=augment,
        eval_transform=build_transforms(int(image_size), mean, std, train=False),
        loss=make_loss(cfg, info) if with_loss else None,
        metadata_inputs=model.metadata_inputs,
    )
