"""Calibration of the lesion head: temperature scaling, and the numbers that say how well it worked.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T > 0`` before the softmax: the argmax,
and so every accuracy metric, stays the same, only the confidence changes (``T > 1`` softens an over-confident
model). :func:`fit_temperature` finds ``T`` on held-out data (``skintune export`` uses the validation split) by
minimising the negative log-likelihood over ``log T`` with L-BFGS, in float64.

:func:`nll` is the mean negative log-likelihood of the true class; :func:`ece` the expected calibration error of
the top class: the images are binned by their top probability into ``bins`` equal-width bins, and the
``|accuracy - mean confidence|`` of each bin is averaged, weighted by the bin's share of the images.

Probabilities stored without their logits (a retrain's ``predictions.parquet``) can be rescaled too:
``log(probs)`` differs from the logits by one constant per row, which the softmax ignores, so
:func:`logits_from_probs` gives logits that temperature scaling treats exactly as the originals.
"""

from __future__ import annotations

import numpy as np
import torch

TEMPERATURE_RANGE = (0.05, 20.0)  # a fitted temperature is clipped to this range (a degenerate split cannot run away)
ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logits_from_probs(probs: np.ndarray) -> np.ndarray:
    """Logits equivalent to ``probs`` under softmax and temperature scaling (``log p``, zeros clipped to the
    smallest float32)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), np.finfo(np.float32).tiny, None))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities clipped at 1e-12)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top class over ``bins`` equal-width confidence bins."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    confidence, hit = probs.max(axis=1), probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)  # (k/bins, (k+1)/bins]; 1.0 in the last
    total = 0.0
    for k in range(bins):
        mask = which == k
        if mask.any():
            total += mask.mean() * abs(hit[mask].mean() - confidence[mask].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(logits / T)`` on ``labels`` (L-BFGS on
    ``log T`` from ``T = 1``, float64), clipped to :data:`TEMPERATURE_RANGE`; 1.0 without data."""
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(labels_t) == 0:
        return 1.0
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), labels_t)
        loss.backward()
        return loss

    opt.step(closure)
    value = float(log_t.detach().exp())
    if not np.isfinite(value):
        return 1.0
    return float(np.clip(value, *TEMPERATURE_RANGE))


def calibration_numbers(logits: np.ndarray, labels: np.ndarray, temperature: float, bins: int = ECE_BINS) -> dict:
    """``images``, ``nll_before``/``nll_after`` and ``ece_before``/``ece_after`` of ``logits`` on ``labels``
    without (``T = 1``) and with ``temperature``."""
    before, after = softmax(logits), softmax(logits, temperature)
    return {
        "images": len(labels),
        "nll_before": nll(before, labels),
        "nll_after": nll(after, labels),
        "ece_before": ece(before, labels, bins),
        "ece_after": ece(after, labels, bins),
    }
