"""Retrain's test evaluation with test-time augmentation and on the run's device (trainables/evaluate.py): TTA
averages probabilities over the views and keeps the plain view's loss; the device follows the run (CPU here; the
CUDA comparison runs where there is a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.checkpoint import save_checkpoint
from trainables.config import TrainConfig
from trainables.data.loader import ShardDataset
from trainables.data.prepare import load_info
from trainables.errors import UserError
from trainables.evaluate import eval_device, evaluate_checkpoint
from trainables.factory import build_parts
from trainables.metrics import lesion_metrics
from trainables.tta import tta_views


@pytest.fixture(scope="module")
def checkpoint(smoke_data, tmp_path_factory) -> str:
    prepared = smoke_data[1]
    cfg = TrainConfig(prepared=prepared, backbone="test_efficientnet", pretrained=False)
    torch.manual_seed(0)
    parts = build_parts(cfg, load_info(prepared), with_loss=True)
    folder = tmp_path_factory.mktemp("tta-ckpt")
    save_checkpoint(folder, parts.model, {"loss": parts.loss.state_dict()}, {"config": cfg.model_dump()})
    return str(folder)


def test_tta_averages_views_and_keeps_the_plain_views_loss(checkpoint, smoke_data):
    plain_metrics, plain = evaluate_checkpoint(checkpoint, "val", batch_size=16)
    metrics, frame = evaluate_checkpoint(checkpoint, "val", batch_size=16, tta=8)
    probs, plain_probs = np.stack(frame["lesion_probs"]), np.stack(plain["lesion_probs"])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5) and np.allclose(np.stack(frame["site_probs"]).sum(1), 1, atol=1e-5)
    assert np.abs(probs - plain_probs).max() > 1e-6  # the views change an (untrained, near-uniform) CNN's output
    assert metrics["val/loss"] == pytest.approx(plain_metrics["val/loss"], rel=1e-6)
    classes = load_info(smoke_data[1])["lesion_classes"]
    expected = lesion_metrics(frame["lesion"].to_numpy(), probs, classes)
    assert metrics["val/lesion_bacc"] == pytest.approx(expected["lesion_bacc"])
    assert metrics["val/lesion_auc"] == pytest.approx(expected["lesion_auc"], abs=1e-6)

    # by hand: the mean softmax of the eight views of each image, as the checkpoint's network gives them
    from trainables.checkpoint import load_meta, load_weights
    from trainables.config import parse_train_config

    cfg = parse_train_config(load_meta(checkpoint)["config"], source="meta.json")
    parts = build_parts(cfg, load_info(smoke_data[1]))
    load_weights(checkpoint, parts.model)
    parts.model.eval()
    dataset = ShardDataset(smoke_data[1], "val", parts.eval_transform)
    x = torch.stack([dataset[i][0] for i in range(3)])
    with torch.no_grad():
        by_hand = sum(torch.softmax(parts.model(v)[0], 1) for v in tta_views(x, 8)) / 8
    assert np.allclose(probs[:3], by_hand.numpy(), atol=1e-5)


def test_eval_device_follows_the_run():
    assert eval_device(False) == torch.device("cpu")
    assert eval_device(True) == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_bad_tta_is_a_user_error(checkpoint):
    with pytest.raises(UserError, match="tta=0"):
        evaluate_checkpoint(checkpoint, "val", tta=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_evaluation_matches_cpu(checkpoint):
    cpu_metrics, cpu = evaluate_checkpoint(checkpoint, "val", batch_size=16, tta=2)
    gpu_metrics, gpu = evaluate_checkpoint(checkpoint, "val", batch_size=16, device="cuda", tta=2)
    assert np.allclose(np.stack(cpu["lesion_probs"]), np.stack(gpu["lesion_probs"]), atol=1e-4)
    assert gpu_metrics["val/loss"] == pytest.approx(cpu_metrics["val/loss"], rel=1e-4)
