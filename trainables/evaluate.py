"""Evaluate a two-head model on a whole split, exactly, across DDP ranks; and a saved checkpoint on a split.

Each rank predicts a disjoint slice of the split (rank, rank + world, ...: no padding, no duplicates), the
per-image predictions are gathered on every rank, and the metrics are computed once over the whole split with
scikit-learn. Ratios are never averaged per rank.

:func:`evaluate_checkpoint` runs after retraining (on the held-out test split) and returns the per-image
predictions with the metrics, so that the report's paired statistics work on the very predictions the metrics
came from. It runs on the run's device (:func:`eval_device`: the GPU when the run trained on one and CUDA is there,
else the CPU) and, with ``tta`` > 1, averages the probabilities over that many flips/rotations
(:mod:`trainables.tta`; the loss stays that of the plain view).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from trainables import storage
from trainables.checkpoint import load_meta, load_train_state, load_weights
from trainables.config import parse_train_config
from trainables.data.loader import ShardDataset
from trainables.data.prepare import load_info
from trainables.factory import build_parts
from trainables.metrics import confusion_matrix, lesion_metrics, site_metrics
from trainables.tta import check_tta, tta_views


@dataclass
class Predictions:
    """Per-image outputs of one split, in dataset order."""

    index: np.ndarray  # position in the dataset
    lesion: np.ndarray  # true lesion class
    site: np.ndarray  # true site, -1 = missing
    lesion_probs: np.ndarray  # (n, n_lesion)
    site_probs: np.ndarray | None  # (n, n_site) or None for a single-task model
    loss: float  # mean total loss over the split


def rank_slice(dataset: ShardDataset, rank: int, world: int) -> Subset:
    return Subset(dataset, list(range(rank, len(dataset), world)))


def _gather(parts: dict) -> list[dict]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, parts)
        return out
    return [parts]


@torch.no_grad()
def predict(
    model, loader: Iterable, loss_fn, device, rank: int = 0, world: int = 1, autocast=None, tta: int = 1
) -> Predictions:
    """Run ``model`` over ``loader`` (built on :func:`rank_slice`) and gather the whole split on every rank.
    Batches are ``(images, lesion, site)`` or, for a network with metadata inputs, ``(images, lesion, site, meta)``
    (``ShardDataset(with_meta=True)``): the metadata as recorded, never blanked. ``tta`` > 1: the probabilities are
    averaged over the first ``tta`` views of :func:`trainables.tta.tta_views` (the loss is the plain view's)."""
    check_tta(tta)
    model.eval()
    lesion_p, site_p, les, sit, loss_sum = [], [], [], [], 0.0
    for images, lesion, site, *meta in loader:
        images, lesion, site = images.to(device), lesion.to(device), site.to(device)
        extra = (meta[0].to(device),) if meta else ()
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            lesion_logits, site_logits = model(images, *extra)
            losses = loss_fn(lesion_logits.float(), None if site_logits is None else site_logits.float(), lesion, site)
            lesion_prob = torch.softmax(lesion_logits.float(), 1)
            site_prob = None if site_logits is None else torch.softmax(site_logits.float(), 1)
            for view in tta_views(images, tta)[1:]:
                view_lesion, view_site = model(view, *extra)
                lesion_prob = lesion_prob + torch.softmax(view_lesion.float(), 1)
                if site_prob is not None and view_site is not None:
                    site_prob = site_prob + torch.softmax(view_site.float(), 1)
        loss_sum += float(losses["loss"]) * len(lesion)
        lesion_p.append((lesion_prob / tta).cpu())
        if site_prob is not None:
            site_p.append((site_prob / tta).cpu())
        les.append(lesion.cpu())
        sit.append(site.cpu())
    n_local = sum(len(x) for x in les)
    local = {
        "index": np.arange(rank, rank + world * n_local, world)[:n_local],
        "lesion": torch.cat(les).numpy() if les else np.zeros(0, np.int64),
        "site": torch.cat(sit).numpy() if sit else np.zeros(0, np.int64),
        "lesion_probs": torch.cat(lesion_p).numpy() if lesion_p else None,
        "site_probs": torch.cat(site_p).numpy() if site_p else None,
        "loss_sum": loss_sum,
    }
    parts = [p for p in _gather(local) if len(p["index"])]
    order = np.argsort(np.concatenate([p["index"] for p in parts]))
    stack = lambda key: np.concatenate([p[key] for p in parts])[order]  # noqa: E731
    has_site = parts[0]["site_probs"] is not None
    return Predictions(
        index=stack("index"),
        lesion=stack("lesion"),
        site=stack("site"),
        lesion_probs=stack("lesion_probs"),
        site_probs=stack("site_probs") if has_site else None,
        loss=sum(p["loss_sum"] for p in parts) / max(1, len(order)),
    )


def split_metrics(pred: Predictions, lesion_classes: list[str], prefix: str) -> tuple[dict, np.ndarray]:
    """The metrics of one split (``<prefix>/lesion_bacc``...: docs/design.md, "Metric names") and the lesion
    confusion matrix."""
    metrics = {"loss": pred.loss, **lesion_metrics(pred.lesion, pred.lesion_probs, lesion_classes)}
    if pred.site_probs is not None:
        metrics.update(site_metrics(pred.site, pred.site_probs))
    cm = confusion_matrix(pred.lesion, pred.lesion_probs.argmax(1), len(lesion_classes))
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}, cm


def eval_device(use_gpu: bool) -> torch.device:
    """The device of a run's evaluation: ``cuda`` when the run trained on a GPU and CUDA is available here (a CPU-only
    node, or a process that sees no GPU, gets the CPU), else the CPU."""
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def evaluate_checkpoint(
    checkpoint_dir: str,
    split: str = "test",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    tta: int = 1,
) -> tuple[dict, pd.DataFrame]:
    """``(metrics named <split>/..., predictions)`` of the checkpoint on ``split``, on ``device``, with ``tta``
    test-time views (1: none). The metrics and predictions are the same on any device up to float rounding."""
    device = torch.device(device)
    meta = load_meta(checkpoint_dir)
    cfg = parse_train_config(meta["config"], source=f"{checkpoint_dir}/meta.json")
    prepared = storage.local_dir(cfg.prepared)
    info = load_info(prepared)
    parts = build_parts(cfg, info, with_loss=True)
    load_weights(checkpoint_dir, parts.model)
    assert parts.loss is not None  # built with_loss
    parts.loss.load_state_dict(load_train_state(checkpoint_dir)["loss"])  # learned task weights, as trained
    dataset = ShardDataset(prepared, split, parts.eval_transform, with_meta=bool(parts.metadata_inputs))
    model, loss = parts.model.to(device), parts.loss.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda")
    pred = predict(model, loader, loss, device, tta=tta)
    metrics, _ = split_metrics(pred, info["lesion_classes"], split)
    frame = pd.DataFrame(
        {
            "image_id": [dataset.image_ids[i] for i in pred.index],
            "group_id": [dataset.group_ids[i] for i in pred.index],
            "lesion": pred.lesion,
            "site": pred.site,
            "lesion_probs": list(pred.lesion_probs.astype("float32")),
            "site_probs": list(pred.site_probs.astype("float32")) if pred.site_probs is not None else None,
        }
    )
    return metrics, frame
