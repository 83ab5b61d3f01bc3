"""Evaluate a saved checkpoint on a split of the prepared data: metrics plus per-image predictions.

Used after retraining (the held-out test split) so that the report's paired statistics work on the very
predictions the metrics came from.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.data import DataLoader

from trainables import storage
from trainables.checkpoint import load_meta, load_train_state, load_weights
from trainables.config import parse_train_config
from trainables.data.loader import ShardDataset, build_transforms
from trainables.data.prepare import load_info
from trainables.evaluate import predict, split_metrics
from trainables.model import build_model
from trainables.pretrained import data_config
from trainables.train_loop import make_loss


def evaluate_checkpoint(checkpoint_dir: str, split: str = "test", batch_size: int = 64) -> tuple[dict, pd.DataFrame]:
    """``(metrics named <split>/..., predictions)`` of the checkpoint on ``split``."""
    meta = load_meta(checkpoint_dir)
    cfg = parse_train_config(meta["config"], source=f"{checkpoint_dir}/meta.json")
    prepared = storage.local_dir(cfg.prepared)
    info = load_info(prepared)
    n_sites = len(info["site_classes"]) if cfg.multitask else 0
    model = build_model(cfg.backbone, False, len(info["lesion_classes"]), n_sites, cfg.dropout)
    load_weights(checkpoint_dir, model)
    norm = data_config(cfg.backbone)
    size = cfg.image_size or info["prepare_options"]["image_size"]
    dataset = ShardDataset(prepared, split, build_transforms(size, norm["mean"], norm["std"], train=False))
    loss_fn = make_loss(cfg, info)
    loss_fn.load_state_dict(load_train_state(checkpoint_dir)["loss"])  # learned task weights, as trained
    pred = predict(model, DataLoader(dataset, batch_size=batch_size), loss_fn, torch.device("cpu"))
    metrics, _ = split_metrics(pred, info["lesion_classes"], split)
    frame = pd.DataFrame(
        {
            "image_id": [dataset.image_ids[i] for i in pred.index],
            "lesion": pred.lesion,
            "site": pred.site,
            "lesion_probs": list(pred.lesion_probs.astype("float32")),
            "site_probs": list(pred.site_probs.astype("float32")) if pred.site_probs is not None else None,
        }
    )
    return metrics, frame
