"""Losses: masked site loss, lesion loss variants, fixed and learned task weighting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.errors import UserError
from trainables.losses import LesionLoss, build_loss, class_weights, site_loss


def _logits(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def test_site_loss_all_missing_is_zero_with_zero_gradients() -> None:
    logits = _logits(4, 3)
    loss = site_loss(logits, torch.full((4,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros(4, 3))


def test_site_loss_partial_batch_is_ce_over_known_rows() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0], [0.0, 0.0, 3.0]])
    target = torch.tensor([0, -1, 1, -1])
    # by hand: row 0 -log(e^2 / (e^2 + 2)), row 2 -log(1/3); mean over the two known rows
    expected = (-math.log(math.exp(2) / (math.exp(2) + 2)) + math.log(3)) / 2
    assert site_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert site_loss(logits, target).item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=-1))


def test_class_weights() -> None:
    w = class_weights([10, 30, 0, 60])
    assert w.mean().item() == pytest.approx(1.0)
    assert w[2].item() == 1.0  # absent class: neutral, not infinite
    assert w[0] / w[1] == pytest.approx(3.0) and w[0] / w[3] == pytest.approx(6.0)
    assert torch.equal(class_weights([0, 0]), torch.ones(2))


def test_weighted_ce_matches_torch() -> None:
    logits, target = _logits(6, 3), torch.tensor([0, 1, 2, 0, 0, 1])
    w = class_weights([3, 2, 1])
    got = LesionLoss("weighted_ce", weight=w)(logits, target)
    assert got.item() == pytest.approx(F.cross_entropy(logits, target, weight=w).item())
    with pytest.raises(ValueError):
        LesionLoss("weighted_ce")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_gamma_zero_is_ce(smoothing: float) -> None:
    logits, target = _logits(8, 4), torch.arange(8) % 4
    ce = LesionLoss("ce", label_smoothing=smoothing)(logits, target)
    focal = LesionLoss("focal", gamma=0.0, label_smoothing=smoothing)(logits, target)
    assert focal.item() == pytest.approx(ce.item(), rel=1e-6)


def test_weighted_focal_gamma_zero_is_weighted_ce() -> None:
    logits, target, w = _logits(8, 4), torch.arange(8) % 4, torch.tensor([1.0, 2.0, 0.5, 1.5])
    weighted = LesionLoss("focal", weight=w, gamma=0.0)(logits, target)
    assert weighted.item() == pytest.approx(F.cross_entropy(logits, target, w).item(), rel=1e-6)


def test_focal_down_weights_easy_examples() -> None:
    logits, target = torch.tensor([[4.0, 0.0], [0.0, 0.2]]), torch.tensor([0, 0])
    p = logits.softmax(-1)[:, 0]
    expected = ((1 - p) ** 2 * -p.log()).mean()
    assert LesionLoss("focal", gamma=2.0)(logits, target).item() == pytest.approx(expected.item())


def test_label_smoothing_matches_torch() -> None:
    logits, target = _logits(5, 3), torch.tensor([0, 1, 2, 1, 0])
    got = LesionLoss("ce", label_smoothing=0.2)(logits, target)
    assert got.item() == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.2).item())


def test_fixed_weights_and_unknown_names() -> None:
    loss = build_loss(kind="ce", w_lesion=1.0, w_site=0.3)
    lesion, site = _logits(4, 3), _logits(4, 2, seed=1)
    ly, sy = torch.tensor([0, 1, 2, 0]), torch.tensor([1, -1, 0, -1])
    out = loss(lesion, site, ly, sy)
    assert set(out) == {"loss", "loss_lesion", "loss_site"}
    assert out["loss"].item() == pytest.approx(out["loss_lesion"].item() + 0.3 * out["loss_site"].item())
    with pytest.raises(UserError, match="focall"):
        build_loss(kind="focall")
    with pytest.raises(UserError, match="weighting"):
        build_loss(weighting="learned")


def test_uncertainty_weighting_learns() -> None:
    loss = build_loss(kind="weighted_ce", class_weights=class_weights([5, 1, 2]), weighting="uncertainty")
    params = list(loss.parameters())
    assert len(params) == 1 and params[0].shape == (2,)
    loss.log_vars.data = torch.tensor([0.5, -0.2])
    lesion, site = _logits(4, 3), _logits(4, 2, seed=1)
    out = loss(lesion, site, torch.tensor([0, 1, 2, 0]), torch.tensor([1, -1, 0, 1]))
    l1, l2 = out["loss_lesion"].item(), out["loss_site"].item()
    expected = math.exp(-0.5) * l1 + 0.5 + math.exp(0.2) * l2 - 0.2
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    out["loss"].backward()
    assert loss.log_vars.grad is not None and bool((loss.log_vars.grad != 0).all())
    assert loss.task_weights()["lesion"] == pytest.approx(math.exp(-0.5))


def test_single_task_ignores_sites() -> None:
    loss = build_loss(kind="ce", multitask=False, weighting="uncertainty", w_lesion=5.0)
    assert list(loss.parameters()) == []
    lesion, ly = _logits(3, 4), torch.tensor([0, 3, 1])
    out = loss(lesion, None, ly, None)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(lesion, ly).item())
    assert out["loss_site"].item() == 0.0
    out["loss"].backward()
    with pytest.raises(ValueError, match="site"):
        build_loss()(lesion, None, ly, None)


def test_all_missing_sites_keep_multitask_loss_finite() -> None:
    loss = build_loss(weighting="uncertainty")
    lesion, site = _logits(3, 4), _logits(3, 2, seed=2)
    out = loss(lesion, site, torch.tensor([0, 1, 2]), torch.full((3,), -1))
    out["loss"].backward()
    assert out["loss_site"].item() == 0.0
    for grad in (lesion.grad, site.grad, loss.log_vars.grad):
        assert grad is not None and bool(torch.isfinite(grad).all())
