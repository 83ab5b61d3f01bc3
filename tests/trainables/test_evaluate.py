"""evaluate_checkpoint without Ray: a checkpoint of the smoke data's network, evaluated on a split; the metrics are
those of the per-image predictions it returns, and the learned loss weights of the checkpoint are the ones used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.checkpoint import save_checkpoint
from trainables.config import TrainConfig
from trainables.data.loader import ShardDataset
from trainables.data.prepare import load_info
from trainables.evaluate import evaluate_checkpoint
from trainables.factory import build_parts
from trainables.metrics import lesion_metrics, site_metrics


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_checkpoint_metrics_are_those_of_its_predictions(smoke_data, tmp_path, weighting):
    prepared = smoke_data[1]
    cfg = TrainConfig(prepared=prepared, backbone="test_efficientnet", pretrained=False, loss_weighting=weighting)
    info = load_info(prepared)
    torch.manual_seed(0)
    parts = build_parts(cfg, info, with_loss=True)
    if weighting == "uncertainty":
        with torch.no_grad():
            parts.loss.log_vars.copy_(torch.tensor([0.5, -0.25]))  # as if learned
    save_checkpoint(tmp_path, parts.model, {"loss": parts.loss.state_dict()}, {"config": cfg.model_dump()})

    metrics, frame = evaluate_checkpoint(str(tmp_path), "val", batch_size=16)
    dataset = ShardDataset(prepared, "val")
    assert list(frame["image_id"]) == dataset.image_ids
    assert (frame["lesion"].to_numpy() == dataset.lesion).all() and (frame["site"].to_numpy() == dataset.site).all()
    probs, site_probs = np.stack(frame["lesion_probs"]), np.stack(frame["site_probs"])
    expected = lesion_metrics(dataset.lesion, probs, info["lesion_classes"])
    expected.update(site_metrics(dataset.site, site_probs))
    for key, value in expected.items():
        assert metrics[f"val/{key}"] == pytest.approx(value, abs=1e-5), key

    # the loss is the checkpoint's (its learned task weights): the batch-size-weighted mean of batches of 16
    parts.model.eval()
    fresh = build_parts(cfg, info, with_loss=True).loss  # log-variances at zero
    totals = {"checkpoint": 0.0, "fresh": 0.0}
    with torch.no_grad():
        for start in range(0, len(dataset), 16):
            rows = range(start, min(start + 16, len(dataset)))
            images = torch.stack([parts.eval_transform(dataset.decode(i)) for i in rows])
            labels = torch.as_tensor(dataset.lesion[rows]), torch.as_tensor(dataset.site[rows])
            logits = parts.model(images)
            for name, loss_fn in (("checkpoint", parts.loss), ("fresh", fresh)):
                totals[name] += float(loss_fn(*logits, *labels)["loss"]) * len(rows)
    assert metrics["val/loss"] == pytest.approx(totals["checkpoint"] / len(dataset), rel=1e-5)
    if weighting == "uncertainty":
        assert metrics["val/loss"] != pytest.approx(totals["fresh"] / len(dataset), rel=1e-3)


def test_a_metadata_checkpoint_is_evaluated_with_each_images_recorded_metadata(smoke_data, tmp_path):
    """A network with metadata inputs gets every image's own raw codes (never blanked) at evaluation: the
    predictions are those of the network called with the split's metadata, and differ from all-missing ones."""
    prepared = smoke_data[1]
    cfg = TrainConfig(
        prepared=prepared, backbone="test_efficientnet", pretrained=False, metadata_inputs=["site", "age", "sex"]
    )
    info = load_info(prepared)
    torch.manual_seed(0)
    parts = build_parts(cfg, info, with_loss=True)
    save_checkpoint(tmp_path, parts.model, {"loss": parts.loss.state_dict()}, {"config": cfg.model_dump()})
    _, frame = evaluate_checkpoint(str(tmp_path), "val", batch_size=16)
    dataset = ShardDataset(prepared, "val")
    rows = range(8)
    images = torch.stack([parts.eval_transform(dataset.decode(i)) for i in rows])
    with torch.no_grad():
        with_meta = torch.softmax(parts.model.eval()(images, torch.from_numpy(dataset.meta[:8]))[0], 1)
        without = torch.softmax(parts.model(images)[0], 1)
    got = np.stack(frame["lesion_probs"][:8])
    np.testing.assert_allclose(got, with_meta.numpy(), atol=1e-5)
    assert not np.allclose(got, without.numpy(), atol=1e-5)
