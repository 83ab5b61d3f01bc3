"""Metrics on hand-made predictions whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.metrics import (
    OBJECTIVE,
    VAL_SITE_ACC,
    confusion_matrix,
    lesion_metrics,
    prefixed,
    recall_key,
    site_metrics,
)

CLASSES = ["mel", "nv", "bcc"]


def _onehot(pred: list[int], n: int = 3) -> np.ndarray:
    probs = np.full((len(pred), n), 0.1)
    probs[np.arange(len(pred)), pred] = 0.8
    return probs


def test_lesion_metrics_balanced_accuracy_and_recall() -> None:
    y = [0, 0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 0, 1, 1, 0, 2, 2]  # recalls 3/4, 1/2, 1
    out = lesion_metrics(y, _onehot(pred), CLASSES)
    assert out["lesion_bacc"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert out["lesion_acc"] == pytest.approx(6 / 8)
    assert out[recall_key("mel")] == 0.75 and out["recall/nv"] == 0.5 and out["recall/bcc"] == 1.0
    assert all(type(v) is float for v in out.values())


def test_lesion_auc_skips_absent_class_and_is_exact() -> None:
    y = np.array([0, 0, 1, 1])  # class 2 (bcc) absent: no recall key, not in the AUC
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.5, 0.3, 0.2]])
    # class 0 scores: positives {0.7, 0.4}, negatives {0.3, 0.5}: pairs won 0.7>0.3, 0.7>0.5, 0.4>0.3 → 3/4
    # class 1 scores: positives {0.6, 0.3}, negatives {0.2, 0.5}: 0.6>0.2, 0.6>0.5, 0.3>0.2 → 3/4
    out = lesion_metrics(y, torch.tensor(probs), CLASSES)
    assert out["lesion_auc"] == pytest.approx(0.75)
    assert "recall/bcc" not in out
    assert out["lesion_bacc"] == pytest.approx((0.5 + 0.5) / 2)  # over present classes only


def test_lesion_auc_with_one_class_present_is_chance() -> None:
    out = lesion_metrics([1, 1, 1], _onehot([1, 0, 1]), CLASSES)
    assert out["lesion_auc"] == 0.5 and not np.isnan(list(out.values())).any()
    assert set(out) == {"lesion_bacc", "lesion_auc", "lesion_acc", "recall/nv"}


def test_lesion_metrics_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        lesion_metrics([0, 1], _onehot([0, 1], n=2), CLASSES)


def test_site_metrics_mask_missing_sites() -> None:
    y = [0, -1, 1, 1, -1, 2]
    pred = [0, 2, 1, 0, 2, 1]  # known rows: 0✓ 1✓ 1✗ 2✗ → acc 2/4, recalls 1, 1/2, 0
    out = site_metrics(y, np.array(pred))
    assert out == {"site_acc": 0.5, "site_bacc": pytest.approx(0.5)}
    assert site_metrics(y, _onehot(pred)) == out  # probabilities give the same
    assert site_metrics([-1, -1], np.array([0, 1])) == {}


def test_confusion_matrix_and_names() -> None:
    cm = confusion_matrix([0, 1, 1], [0, 1, 0], 3)
    assert cm.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert prefixed({"lesion_bacc": 0.5, "recall/mel": 1.0}, "val") == {OBJECTIVE: 0.5, "val/recall/mel": 1.0}
    assert VAL_SITE_ACC == "val/site_acc"
