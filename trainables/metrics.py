"""Evaluation metrics (scikit-learn) and their names, which are a contract between worker, Tune, TensorBoard,
report and tests: ``val/lesion_bacc`` (the default objective), ``val/lesion_auc``, ``val/lesion_acc``,
``val/site_acc``, ``val/site_bacc``, ``val/recall/<class>``; the same with ``test/``.

Every value is a plain Python float. Undefined cases, chosen so that no NaN ever reaches Tune:
- ``recall/<class>`` is only reported for classes present in ``y_true`` (absent classes are omitted);
- ``lesion_auc`` is the mean one-vs-rest ROC AUC over the classes present in ``y_true`` (each then has both
  positives and negatives); with fewer than two classes present it is 0.5 (chance);
- ``site_metrics`` use rows with a known site only (``y != -1``); with none it returns ``{}``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

TRAIN, VAL, TEST = "train", "val", "test"
LOSS, LOSS_LESION, LOSS_SITE = "loss", "loss_lesion", "loss_site"
LESION_BACC, LESION_AUC, LESION_ACC = "lesion_bacc", "lesion_auc", "lesion_acc"
SITE_ACC, SITE_BACC = "site_acc", "site_bacc"
RECALL_PREFIX = "recall/"
EPOCH, LR = "epoch", "lr"
OBJECTIVE = f"{VAL}/{LESION_BACC}"  # the default Tune metric, mode "max"
VAL_LESION_AUC, VAL_LESION_ACC = f"{VAL}/{LESION_AUC}", f"{VAL}/{LESION_ACC}"
VAL_SITE_ACC, VAL_SITE_BACC = f"{VAL}/{SITE_ACC}", f"{VAL}/{SITE_BACC}"
TRAIN_LOSS, VAL_LOSS = f"{TRAIN}/{LOSS}", f"{VAL}/{LOSS}"


def recall_key(class_name: str) -> str:
    """``recall/<class>``; prefix it with :func:`prefixed` (``val/recall/<class>``)."""
    return f"{RECALL_PREFIX}{class_name}"


def prefixed(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``{"lesion_bacc": x}`` → ``{"val/lesion_bacc": x}``."""
    return {f"{prefix}/{key}": value for key, value in metrics.items()}


def lesion_metrics(y_true: ArrayLike, probs: object, class_names: Sequence[str]) -> dict[str, float]:
    """Balanced accuracy, macro one-vs-rest AUC, accuracy and per-class recall from class probabilities.

    ``probs`` is an ``(n, len(class_names))`` array or tensor of softmax outputs. Pass probabilities, not
    logits: the AUC ranks each class's column across samples, and softmax changes that order.
    """
    y, p = _as_numpy(y_true).astype(int), _as_numpy(probs).astype(np.float64)
    if y.ndim != 1 or len(y) == 0 or p.shape != (len(y), len(class_names)):
        raise ValueError(f"need n > 0 labels and (n, {len(class_names)}) probs, got {y.shape} and {p.shape}")
    pred = p.argmax(axis=1)
    present = np.unique(y)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected, not a problem
        warnings.simplefilter("ignore", UserWarning)
        out = {LESION_BACC: float(balanced_accuracy_score(y, pred))}
    out[LESION_AUC] = _macro_ovr_auc(y, p, present)
    out[LESION_ACC] = float(accuracy_score(y, pred))
    for c in present:
        out[recall_key(class_names[c])] = float(np.mean(pred[y == c] == c))
    return out


def site_metrics(y_true: ArrayLike, probs_or_pred: object) -> dict[str, float]:
    """``site_acc`` and ``site_bacc`` over rows with a known site; ``{}`` when no row has one.

    ``probs_or_pred`` is ``(n, n_sites)`` probabilities/logits or ``(n,)`` predicted indices.
    """
    y, p = _as_numpy(y_true).astype(int), _as_numpy(probs_or_pred)
    pred = p.argmax(axis=1) if p.ndim == 2 else p.astype(int)
    if pred.shape != y.shape:
        raise ValueError(f"site labels {y.shape} and predictions {pred.shape} differ in length")
    known = y != -1
    if not known.any():
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bacc = float(balanced_accuracy_score(y[known], pred[known]))
    return {SITE_ACC: float(accuracy_score(y[known], pred[known])), SITE_BACC: bacc}


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n: int) -> np.ndarray:
    """``(n, n)`` counts, rows = true class, columns = predicted, every class in ``range(n)`` included."""
    return _sk_confusion_matrix(_as_numpy(y_true), _as_numpy(y_pred), labels=list(range(n)))


def _macro_ovr_auc(y: np.ndarray, p: np.ndarray, present: np.ndarray) -> float:
    if len(present) < 2:
        return 0.5
    return float(np.mean([roc_auc_score(y == c, p[:, c]) for c in present]))


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (any device, bf16 included), without importing torch here
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)
