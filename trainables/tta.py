"""Test-time augmentation: average the softmax probabilities over flips and 90° rotations of each image.

A lesion has no orientation, so the eight symmetries of the square (the dihedral group D4) are all valid views.
:func:`tta_views` gives the first ``n`` of them, identity first, in the order of :data:`VIEW_NAMES` (the flips
before the rotations, so ``n=2`` is the common horizontal-flip TTA and ``n=4`` the flips and the half turn);
:func:`predict_tta` runs a two-head model on each view and averages the probabilities. ``n=1`` is no TTA.

Each view is a separate forward pass: with square images (the evaluation transforms center-crop) the views have
the input's shape; the rotations need ``H == W``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from trainables.errors import UserError

MAX_VIEWS = 8
VIEW_NAMES = ("identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose")


def _view(x: Tensor, name: str) -> Tensor:
    if name == "identity":
        return x
    if name == "hflip":
        return x.flip(-1)  # mirror left-right (the width is the last dimension)
    if name == "vflip":
        return x.flip(-2)  # mirror top-bottom
    if name == "rot180":
        return x.flip(-2).flip(-1)
    if name == "rot90":
        return x.rot90(1, (-2, -1))
    if name == "rot270":
        return x.rot90(3, (-2, -1))
    if name == "transpose":
        return x.transpose(-2, -1)
    return x.rot90(2, (-2, -1)).transpose(-2, -1)  # antitranspose


def check_tta(n: int) -> int:
    """``n`` when it is a number of views (1-8); a :class:`UserError` otherwise."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_VIEWS:
        raise UserError(
            f"tta={n!r}: the number of test-time views must be a whole number from 1 (no TTA) to {MAX_VIEWS} "
            "(flips and 90-degree rotations)"
        )
    return n


def tta_views(x: Tensor, n: int) -> list[Tensor]:
    """The first ``n`` (1-8) dihedral transforms of the batch ``x`` ``(B, 3, H, W)``, the identity first."""
    check_tta(n)
    if n > 4 and x.shape[-1] != x.shape[-2]:
        raise UserError(f"tta={n}: rotations need square images, got {x.shape[-2]}x{x.shape[-1]}; use tta <= 4")
    return [_view(x, name) for name in VIEW_NAMES[:n]]


@torch.no_grad()
def predict_tta(
    model: Callable, x: Tensor, n: int, meta: Tensor | None = None, temperature: float = 1.0
) -> tuple[Tensor, Tensor | None]:
    """``(lesion_probs, site_probs)`` of ``model`` on ``x``: the softmax probabilities (float32) averaged over the
    first ``n`` views of :func:`tta_views`. ``meta`` (the raw metadata codes) goes with every view when given;
    the lesion logits are divided by ``temperature`` before the softmax. ``site_probs`` is ``None`` for a model
    without a site head (``None`` or an empty ``(B, 0)`` site output, as a traced single-task model gives)."""
    if not temperature > 0:
        raise UserError(f"temperature {temperature!r} must be > 0 (re-export the model)")
    lesion_sum: Tensor | None = None
    site_sum: Tensor | None = None
    for view in tta_views(x, n):
        lesion_logits, site_logits = model(view) if meta is None else model(view, meta)
        lesion_p = torch.softmax(lesion_logits.float() / temperature, 1)
        lesion_sum = lesion_p if lesion_sum is None else lesion_sum + lesion_p
        if site_logits is not None and site_logits.shape[1] > 0:
            site_p = torch.softmax(site_logits.float(), 1)
            site_sum = site_p if site_sum is None else site_sum + site_p
    assert lesion_sum is not None  # n >= 1
    return lesion_sum / n, None if site_sum is None else site_sum / n
