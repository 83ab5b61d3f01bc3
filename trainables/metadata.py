"""Patient metadata as a model input: the raw codes, their encoding, and training-time blanking.

A batch's metadata travels as one small float tensor of raw codes, shape ``(batch, 3)``, columns in
:data:`RAW_FIELDS` order: the body-site index (``-1`` = missing), the age in years (``NaN`` = missing) and the sex
index (``-1`` = missing), as stored in the shards (trainables/data/schema.py). :func:`raw_metadata` builds it,
:func:`encode_metadata` turns it into the network's input vector (the ONE encoding: the network calls it in
``forward``, so training, evaluation, predict and the TorchScript export all use it), and :func:`blank_metadata`
sets fields to missing at random during training (``train.metadata_dropout``), so that a model also works when a
field is missing at inference.

Encoding of the fields a config uses (``train.metadata_inputs``), always in :data:`RAW_FIELDS` order:

- ``site``: one-hot over the site classes, plus a missing indicator (all-zero one-hot when missing);
- ``age``: ``age / 100`` (0 when missing), plus a missing indicator;
- ``sex``: one-hot over :data:`~trainables.data.schema.SEX_CLASSES`, plus a missing indicator.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from trainables.data.schema import METADATA_FIELDS, SEX_CLASSES

RAW_FIELDS = METADATA_FIELDS  # ("site", "age", "sex"): the columns of a raw metadata tensor
AGE_SCALE = 100.0
MISSING_CODE = {"site": -1.0, "age": float("nan"), "sex": -1.0}


def raw_metadata(site: np.ndarray, age: np.ndarray, sex: np.ndarray) -> np.ndarray:
    """The raw codes of ``n`` images as a ``(n, 3)`` float32 array (site, age, sex; -1 / NaN / -1 = missing)."""
    return np.stack([np.asarray(site), np.asarray(age), np.asarray(sex)], axis=1).astype(np.float32)


def ordered(fields: Iterable[str]) -> tuple[str, ...]:
    """``fields`` in :data:`RAW_FIELDS` order (the encoding's order, whatever order a config lists them in)."""
    chosen = set(fields)
    return tuple(f for f in RAW_FIELDS if f in chosen)


def encoded_width(fields: Iterable[str], num_sites: int) -> int:
    """Length of the vector :func:`encode_metadata` makes for ``fields`` with ``num_sites`` site classes."""
    widths = {"site": num_sites + 1, "age": 2, "sex": len(SEX_CLASSES) + 1}
    return sum(widths[f] for f in ordered(fields))


def _one_hot_with_missing(codes: Tensor, n: int) -> Tensor:
    """One-hot of integer-valued float ``codes`` over ``0..n-1`` (all zero for a code outside it, e.g. -1 or NaN),
    then a column that is 1 exactly where the one-hot is all zero. Comparisons only: traces into TorchScript."""
    classes = torch.arange(n, device=codes.device, dtype=codes.dtype)
    hot = (codes.unsqueeze(1) == classes).to(codes.dtype)
    missing = 1.0 - hot.sum(1, keepdim=True)
    return torch.cat([hot, missing], 1)


def encode_metadata(raw: Tensor, fields: Iterable[str], num_sites: int) -> Tensor:
    """``(batch, 3)`` raw codes -> ``(batch, encoded_width(fields, num_sites))`` float input (module docstring)."""
    raw = raw.float()
    parts = []
    for name in ordered(fields):
        column = raw[:, RAW_FIELDS.index(name)]
        if name == "age":
            missing = torch.isnan(column)
            scaled = torch.where(missing, torch.zeros_like(column), column / AGE_SCALE)
            parts.append(torch.stack([scaled, missing.to(raw.dtype)], 1))
        else:
            parts.append(_one_hot_with_missing(column, num_sites if name == "site" else len(SEX_CLASSES)))
    if not parts:
        return raw.new_zeros((raw.shape[0], 0))
    return torch.cat(parts, 1)


def all_missing(batch: int, device: torch.device | str | None = None) -> Tensor:
    """Raw codes with every field missing: the network's input when no metadata is given."""
    row = torch.tensor([MISSING_CODE[f] for f in RAW_FIELDS], dtype=torch.float32, device=device)
    return row.expand(batch, len(RAW_FIELDS)).clone()


def blank_metadata(raw: Tensor, fields: Iterable[str], p: float, generator: torch.Generator) -> Tensor:
    """A copy of ``raw`` in which each of ``fields`` is set to missing, independently per image and field, with
    probability ``p``. The draws come from ``generator`` (a CPU generator), so they are reproducible and leave the
    global RNG (augmentation, dropout) untouched; ``p == 0`` draws nothing."""
    out = raw.clone()
    names = ordered(fields)
    if p <= 0.0 or not names or raw.shape[0] == 0:
        return out
    draws = torch.rand((raw.shape[0], len(names)), generator=generator) < p
    draws = draws.to(raw.device)
    for k, name in enumerate(names):
        column = RAW_FIELDS.index(name)
        missing = torch.full_like(out[:, column], MISSING_CODE[name])
        out[:, column] = torch.where(draws[:, k], missing, out[:, column])
    return out


def blanking_generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    """The generator of one rank's blanking draws in one epoch: a function of (seed, rank, epoch) only, so a run
    resumed at an epoch draws what an uninterrupted one would have."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0]))
