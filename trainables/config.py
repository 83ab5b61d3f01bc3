"""``TrainConfig``: every setting of one training run (one trial, one retrain seed), typed and validated once.

The search space samples a subset of these keys by name; the driver merges the sample into the experiment's
base settings and the worker builds a ``TrainConfig`` from the resulting plain dict (a dict crosses Ray's process
boundaries and checkpoints cleanly). Unknown keys are errors, so a typo in a YAML key never passes silently.
A ``backbone`` must be a timm model name (checked here, with a "did you mean", so a typo fails before Ray
starts); :func:`format_validation_error` suggests the closest key for an unknown one.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

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
    metadata_inputs: list[Literal["site", "age", "sex"]] = Field(
        default_factory=list,
        description="patient metadata fused with the image features before the lesion head (empty: image only)",
    )
    metadata_dropout: float = Field(
        0.1, ge=0.0, le=1.0, description="training: probability that each metadata field is blanked (set missing)"
    )
    fusion_width: int = Field(64, ge=1, description="width of the metadata MLP (with metadata_inputs)")
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
    gpu_decode: bool = Field(
        False,
        description="decode JPEGs and augment on the GPU (nvJPEG), not in loader workers: 1.07x the default path on "
        "an H200 with 10 loader workers (1,757 vs 1,644 img/s); most useful where few CPU cores feed each GPU",
    )
    # records
    tensorboard_dir: str | None = Field(None, description="where rank 0 writes TensorBoard events")

    @field_validator("metadata_inputs")
    @classmethod
    def _distinct_inputs(cls, fields: list[str]) -> list[str]:
        repeated = sorted({f for f in fields if fields.count(f) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once; name each field once")
        return fields

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        """A typo'd backbone fails here, at the edge, not in a Ray worker minutes later."""
        from trainables.pretrained import check_backbone  # torch + timm: imported only when a backbone is named

        try:
            check_backbone(name)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return name


TRAIN_KEYS = frozenset(TrainConfig.model_fields)


def parse_train_config(data: dict, source: str = "train config") -> TrainConfig:
    """Validate ``data``; every problem is reported in one line naming its key."""
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        raise UserError(f"{source}: {format_validation_error(exc, model=TrainConfig)}") from None


def value_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not a valid setting of the training-config key ``key`` (None: it is, or ``key`` is not
    a TrainConfig key). Search spaces use it to check fixed values and categorical choices up front."""
    if key not in TRAIN_KEYS:
        return None
    try:
        TrainConfig(**{key: value})
    except ValidationError as exc:
        return "; ".join(_problem(err, TrainConfig) for err in exc.errors())
    return None


def format_validation_error(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line listing every pydantic error as ``key.path: message``; with ``model`` (the validated class) an
    unknown key gets a "did you mean" suggestion from the keys allowed where it was found."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        parts.append(f"{key}: {_problem(err, model)}")
    return "; ".join(parts)


def _problem(err: ErrorDetails, model: type[BaseModel] | None) -> str:
    """One pydantic error as a message that says what to write instead."""
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, err["loc"][:-1]) if model is not None else []
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        if close:
            return f"unknown key (did you mean {close[0]!r}?)"
        return f"unknown key (check the spelling; allowed: {', '.join(allowed)})" if allowed else "unknown key"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] not in ("missing", "value_error") and isinstance(value, (str, int, float, bool)):
        msg += f" (got {value!r})"
    return msg


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the (nested) model found at ``loc``; [] where ``loc`` is not a nested model."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)
