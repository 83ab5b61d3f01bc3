"""Checkpoint I/O without pickles: weights in safetensors, training state through ``weights_only`` loading.

A checkpoint directory holds::

    model.safetensors   the model's weights (DDP wrapper removed)
    train_state.pt      optimizer, scheduler and loss-weight state + epoch (tensors and plain types only)
    meta.json           the TrainConfig, vocabularies, metrics of that epoch, where the weights came from

``torch.load(..., weights_only=True)`` refuses anything but tensors and plain containers, so a tampered
``train_state.pt`` cannot run code on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from trainables.errors import UserError

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
META_FILE = "meta.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(directory: str | Path, model: nn.Module, state: dict, meta: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(unwrap(model), str(directory / MODEL_FILE))
    torch.save(state, directory / STATE_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return directory


def load_meta(directory: str | Path) -> dict:
    path = Path(directory) / META_FILE
    if not path.exists():
        raise UserError(f"{path} not found: {directory} is not a skintune checkpoint")
    return json.loads(path.read_text())


def load_weights(directory: str | Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` into ``model`` (strict: every key must match)."""
    path = Path(directory) / MODEL_FILE
    missing, unexpected = load_model(unwrap(model), str(path), strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not fit the model (missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}); was it written for another backbone?"
        )


def load_train_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an UnpicklingError for anything that is not plain state
        raise UserError(f"{path}: refused to load ({str(exc).splitlines()[0]}); only tensors are allowed") from exc
