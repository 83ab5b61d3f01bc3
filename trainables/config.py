"""``TrainConfig``: every setting of one training run (one trial, one retrain seed), typed and validated once.

The search space samples a subset of these keys by name; the driver merges the sample into the experiment's
base settings and the worker builds a ``TrainConfig`` from the resulting plain dict (a dict crosses Ray's process
boundaries and checkpoints cleanly). Unknown keys are errors, so a typo in a YAML key never passes silently.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainables.errors import UserError


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # data
    prepared: str = Field("", description="folder written by `skintune prepare` (dataset.json + shards)")
    image_size: int | None = Field(None, ge=16, description="crop size; default: the prepared image size")
    batch_size: int = Field(32, ge=1)
    loader_workers: int = Field(0, ge=0, description="DataLoader processes per Train worker")
    limit_train: int | None = Field(None, ge=1, description="use only the first N training images (tests)")
    # model
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    weights_file: str | None = None
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    multitask: bool = True
    # losses
    w_lesion: float = Field(1.0, ge=0.0)
    w_site: float = Field(0.5, ge=0.0)
    loss_weighting: Literal["fixed", "uncertainty"] = "fixed"
    lesion_loss: Literal["ce", "weighted_ce", "focal"] = "ce"
    focal_gamma: float = Field(2.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # optimisation
    epochs: int = Field(10, ge=1)
    lr_backbone: float = Field(3e-4, gt=0.0)
    lr_head: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm; 0 turns clipping off")
    seed: int = 0
    # augmentation
    aug_strength: float = Field(0.5, ge=0.0, le=1.0)
    crop_scale_min: float = Field(0.6, gt=0.0, le=1.0)
    hflip: bool = True
    rotation: float = Field(180.0, ge=0.0, le=180.0)
    # speed (GPU paths; ignored on CPU)
    amp: Literal["auto", "on", "off"] = "auto"
    channels_last: bool = True
    compile: bool = False
    # records
    tensorboard_dir: str | None = Field(None, description="where rank 0 writes TensorBoard events")


TRAIN_KEYS = frozenset(TrainConfig.model_fields)


def parse_train_config(data: dict, source: str = "train config") -> TrainConfig:
    """Validate ``data``; every problem is reported in one line naming its key."""
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        raise UserError(f"{source}: {format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line listing every pydantic error as ``key.path: message``."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{key}: {msg}")
    return "; ".join(parts)
