"""Test-time augmentation (trainables/tta.py): the eight dihedral views, averaging of probabilities, and that a
network which cannot see orientation gives the same output with and without TTA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.errors import UserError
from trainables.model import build_model
from trainables.tta import MAX_VIEWS, predict_tta, tta_views


class PointwiseNet(nn.Module):
    """A 1x1 convolution then a global average pool: invariant to any permutation of the pixels, so to every
    flip and rotation by construction. Two heads, as MultiTaskNet."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.lesion = nn.Linear(8, 4)
        self.site = nn.Linear(8, 3)

    def forward(self, x, meta=None):
        h = torch.relu(self.conv(x)).mean((2, 3))
        return self.lesion(h), self.site(h)


def test_views_are_the_eight_distinct_symmetries_identity_first():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    views = tta_views(x, MAX_VIEWS)
    assert len(views) == 8 and torch.equal(views[0], x)
    assert len({v.numpy().tobytes() for v in views}) == 8
    assert all(v.shape == x.shape for v in views)
    assert torch.equal(views[1], x.flip(-1))  # the second view is the horizontal flip
    assert [len(tta_views(x, n)) for n in range(1, 9)] == list(range(1, 9))


def test_invariant_model_gives_identical_outputs_with_and_without_tta():
    torch.manual_seed(0)
    model = PointwiseNet().eval()
    x = torch.randn(4, 3, 16, 16)
    plain_lesion, plain_site = (torch.softmax(t, 1) for t in model(x))
    for n in (1, 2, 4, 8):
        lesion, site = predict_tta(model, x, n)
        assert torch.allclose(lesion, plain_lesion, atol=1e-6), n
        assert site is not None and torch.allclose(site, plain_site, atol=1e-6), n


def test_tta_probabilities_sum_to_one_and_differ_from_single_view_for_an_orientation_aware_model():
    torch.manual_seed(0)
    model = build_model("test_efficientnet", False, 5, 3, 0.0).eval()
    x = torch.randn(3, 3, 32, 32)
    one_lesion, one_site = predict_tta(model, x, 1)
    lesion, site = predict_tta(model, x, 8)
    assert torch.allclose(lesion.sum(1), torch.ones(3), atol=1e-5)
    assert site is not None and torch.allclose(site.sum(1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(lesion, one_lesion, atol=1e-6)  # the views do change an ordinary CNN's output
    # n=1 is exactly no TTA
    with torch.no_grad():
        logits, site_logits = model(x)
    assert torch.equal(one_lesion, torch.softmax(logits.float(), 1))
    assert one_site is not None and torch.equal(one_site, torch.softmax(site_logits.float(), 1))


def test_single_task_model_has_no_site_probs_and_temperature_divides_lesion_logits():
    torch.manual_seed(0)
    model = build_model("test_efficientnet", False, 4, 0, 0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    lesion, site = predict_tta(model, x, 2, temperature=2.0)
    assert site is None
    with torch.no_grad():
        expected = sum(torch.softmax(model(v)[0] / 2.0, 1) for v in tta_views(x, 2)) / 2
    assert torch.allclose(lesion, expected, atol=1e-6)


@pytest.mark.parametrize("n", [0, 9, -1, 2.5, True])
def test_bad_number_of_views_is_a_user_error(n):
    with pytest.raises(UserError, match="from 1 \\(no TTA\\) to 8"):
        tta_views(torch.zeros(1, 3, 4, 4), n)
