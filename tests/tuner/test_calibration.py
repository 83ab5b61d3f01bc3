"""Temperature scaling (trainables/calibration.py): it lowers the NLL of a deliberately over-confident model, with
a fitted T > 1, leaves the argmax alone, and its ECE and NLL are the textbook definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.calibration import (
    calibration_numbers,
    ece,
    fit_temperature,
    logits_from_probs,
    nll,
    softmax,
)


def overconfident(n: int = 2000, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a deliberately over-confident model: scores ``x ~ N(0, 1)`` plus ``mu`` on the true class have
    the exact posterior ``softmax(mu * x)`` (calibrated logits ``mu * x``); multiplied by 4, the model is far too
    sure of itself, and T = 4 undoes it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    mu = 1.5
    x = rng.normal(0, 1, (n, classes))
    x[np.arange(n), labels] += mu
    return 4.0 * mu * x, labels


def test_temperature_scaling_lowers_nll_of_an_overconfident_model():
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    assert 3.0 < t < 5.0  # it finds the over-confidence that was built in
    numbers = calibration_numbers(logits, labels, t)
    assert numbers["nll_after"] < numbers["nll_before"] - 0.5
    assert numbers["ece_after"] < numbers["ece_before"] / 3
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()  # accuracy unchanged
    # the fit is the minimum: nearby temperatures are worse
    for other in (0.8 * t, 1.25 * t):
        assert nll(softmax(logits, other), labels) > nll(softmax(logits, t), labels)
    # held-out data from the same model: better too (no overfitting with one parameter)
    test_logits, test_labels = overconfident(seed=1)
    assert nll(softmax(test_logits, t), test_labels) < nll(softmax(test_logits), test_labels)


def test_underconfident_model_gets_t_below_one_and_calibrated_stays_near_one():
    logits, labels = overconfident()
    assert fit_temperature(logits / 16.0, labels) < 1.0  # a quarter of the calibrated scale
    assert fit_temperature(logits / 4.0, labels) == pytest.approx(1.0, abs=0.15)


def test_nll_and_ece_definitions():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    assert nll(probs, labels) == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.55])))
    # bins of 0.25 width: [0.75, 1] holds 0.9 and 0.8 (both right), [0.5, 0.75) 0.6 and 0.55 (one right)
    expected = 0.5 * abs(1.0 - 0.85) + 0.5 * abs(0.5 - 0.575)
    assert ece(probs, labels, bins=4) == pytest.approx(expected)
    assert ece(np.eye(3), np.arange(3)) == 0.0
    torch_nll = torch.nn.functional.nll_loss(torch.log(torch.tensor(probs)), torch.tensor(labels))
    assert nll(probs, labels) == pytest.approx(float(torch_nll))


def test_probabilities_rescale_like_their_logits():
    logits, labels = overconfident(200)
    again = logits_from_probs(softmax(logits))
    for t in (0.5, 1.0, 3.0):
        np.testing.assert_allclose(softmax(again, t), softmax(logits, t), atol=1e-9)
    assert fit_temperature(again, labels) == pytest.approx(fit_temperature(logits, labels), rel=1e-4)


def test_no_data_keeps_temperature_one():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, np.int64)) == 1.0
