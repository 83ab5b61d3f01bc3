"""The contract of an export bundle: its format tag, its file names and its typed ``config.json`` / ``labels.json``.

:mod:`tuner.export` writes bundles and :mod:`tuner.predict` reads them; both take every name and field from here.
A bundle folder holds :data:`BUNDLE_FILES`::

    model.safetensors     the weights (no pickle)
    model.torchscript.pt  the same network traced on CPU in eval mode
    config.json           BundleConfig: architecture, image size, preprocessing, normalisation, provenance
    labels.json           BundleLabels: {"lesion": [...], "site": [...]}, index order of the heads
    metrics.json          see tuner.export_metrics
    MODEL_CARD.md         see tuner.model_card

``format_version`` 1 is the only version so far; bundles written before this module existed have the same
``config.json`` and load unchanged. Fields added since (``metadata_inputs``, ``fusion_width``, ``metadata_sites``,
``inputs``, ``temperature``) have defaults that describe an image-only, uncalibrated model, so older bundles still
load as what they are.

``temperature``: the lesion head's temperature scaling (:mod:`trainables.calibration`), fitted on the validation
split at export; predict and evaluate divide the lesion logits by it before the softmax (the traced and eager
networks return the raw logits).

A model with metadata inputs (``train.metadata_inputs``: site, age, sex) takes two inputs, the image and a
``(batch, 3)`` float tensor of raw codes (:mod:`trainables.metadata`); its TorchScript file is traced with both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainables.config import TrainConfig, format_validation_error, parse_train_config
from trainables.errors import UserError

EXPORT_FORMAT: Final = "skintune-export"
FORMAT_VERSION = 1
WEIGHTS, TORCHSCRIPT, CONFIG, LABELS = "model.safetensors", "model.torchscript.pt", "config.json", "labels.json"
METRICS, CARD = "metrics.json", "MODEL_CARD.md"
BUNDLE_FILES = (WEIGHTS, TORCHSCRIPT, CONFIG, LABELS, METRICS, CARD)
BACKENDS = {"safetensors": WEIGHTS, "torchscript": TORCHSCRIPT}  # predict's backends and the file each loads

PREPROCESSING = (
    "upright RGB; shorter side -> resize_size (bicubic); JPEG at jpeg_quality (as prepare); shorter side -> "
    "image_size (bilinear, antialias); center crop image_size; /255; (x - mean) / std"
)
INPUTS_IMAGE = "image [B, 3, image_size, image_size] (float, preprocessed as `preprocessing`)"
INPUTS_METADATA = (
    "(image [B, 3, image_size, image_size], meta [B, 3] float raw codes: site index into metadata_sites "
    "(-1 = missing), age in years (NaN = missing), sex index 0 female / 1 male (-1 = missing)); fields not in "
    "metadata_inputs are ignored"
)
OUTPUTS = (
    "(lesion_logits [B, num_lesion_classes], site_logits [B, num_site_classes]); softmax each, the lesion logits "
    "divided by temperature first"
)


class BundleConfig(BaseModel):
    """``config.json``: what rebuilds the network and its input, and where it came from."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format: Literal["skintune-export"] = EXPORT_FORMAT
    format_version: int = FORMAT_VERSION
    architecture: Literal["MultiTaskNet"] = "MultiTaskNet"
    backbone: str
    multitask: bool
    num_lesion_classes: int = Field(ge=1)
    num_site_classes: int = Field(ge=0)
    dropout: float
    image_size: int = Field(ge=16)
    resize_size: int | None = Field(None, description="the prepared image size; default image_size")
    jpeg_quality: int = 90
    mean: list[float]
    std: list[float]
    preprocessing: str = PREPROCESSING
    inputs: str = INPUTS_IMAGE
    outputs: str = OUTPUTS
    metadata_inputs: list[Literal["site", "age", "sex"]] = Field(
        default_factory=list, description="patient metadata the network takes besides the image; empty: image only"
    )
    fusion_width: int = Field(64, ge=1, description="width of the metadata MLP (with metadata_inputs)")
    metadata_sites: list[str] = Field(
        default_factory=list, description="the site input's vocabulary (one-hot index order); empty without it"
    )
    temperature: float = Field(
        1.0, gt=0.0, description="lesion logits are divided by it before the softmax (temperature scaling; 1: none)"
    )
    weights_source: str | None = None
    dataset_fingerprint: str | None = None
    train_config: dict[str, Any] = Field(default_factory=dict, description="the TrainConfig of the exported run")
    torch_version: str | None = None
    experiment: str | None = None
    seed: int | None = None
    checkpoint: str | None = None

    @model_validator(mode="after")
    def _resize_defaults_to_image_size(self):
        if self.resize_size is None:
            self.resize_size = self.image_size
        if "site" in self.metadata_inputs and not self.metadata_sites:
            raise ValueError("metadata_inputs has site but metadata_sites (the site vocabulary) is empty")
        return self

    def train_config_of_network(self) -> TrainConfig:
        """The config that :func:`trainables.factory.build_parts` rebuilds this bundle's network from."""
        network = {"backbone": self.backbone, "dropout": self.dropout, "multitask": self.multitask}
        if self.metadata_inputs:
            network.update(metadata_inputs=list(self.metadata_inputs), fusion_width=self.fusion_width)
        return parse_train_config({**network, "image_size": self.image_size, "pretrained": False}, source=CONFIG)

    def dataset_info(self, labels: BundleLabels) -> dict:
        """The class lists :func:`trainables.factory.build_parts` rebuilds the network from: the site list is the
        site head's, or (a single-task model with the site as an input) the site input's vocabulary."""
        return {"lesion_classes": labels.lesion, "site_classes": labels.site or self.metadata_sites}


class BundleLabels(BaseModel):
    """``labels.json``: class names in the index order of the two heads (``site`` empty without a site head)."""

    model_config = ConfigDict(extra="forbid")

    lesion: list[str] = Field(min_length=1)
    site: list[str] = Field(default_factory=list)

    def dataset_info(self) -> dict:
        """The class lists as ``dataset.json`` names them, for :func:`trainables.factory.build_parts`."""
        return {"lesion_classes": self.lesion, "site_classes": self.site}


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds a skintune export (its ``config.json`` carries the format tag)."""
    try:
        return json.loads((folder / CONFIG).read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_bundle_files(folder: Path) -> tuple[BundleConfig, BundleLabels]:
    """``config.json`` and ``labels.json`` of the bundle in ``folder``, validated; a :class:`UserError` names
    the file and the field otherwise."""
    config, labels = _read_json(folder / CONFIG), _read_json(folder / LABELS)
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise UserError(f"{folder / CONFIG}: not a skintune export config (no format {EXPORT_FORMAT!r})")
    return _parse(folder / CONFIG, config, BundleConfig), _parse(folder / LABELS, labels, BundleLabels)


_Model = TypeVar("_Model", bound=BaseModel)


def _parse(path: Path, data: Any, model: type[_Model]) -> _Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problem = format_validation_error(exc, model=model)
        raise UserError(f"{path}: {problem}; re-export the model") from None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({first_line(exc)}); re-export the model") from None


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (at most 200 characters), for one-line messages about bundle files."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
