"""Training losses: lesion loss (CE, class-weighted CE, focal), masked site loss, and their combination.

``build_loss`` is the factory, ``make_loss`` the same from a run's ``TrainConfig``. ``MultiTaskLoss.forward``
returns ``{"loss", "loss_lesion", "loss_site"}`` (tensors; the trainer logs them as ``train/loss`` ...). With
``weighting="uncertainty"`` the loss owns two learnable log-variances: the optimiser must get ``loss.parameters()``
too. ``trainables.train_loop.setup`` adds them as a parameter group of their own, at the head learning rate and
without weight decay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.errors import UserError

if TYPE_CHECKING:
    from trainables.config import TrainConfig

LESION_LOSSES = ("ce", "weighted_ce", "focal")
WEIGHTINGS = ("fixed", "uncertainty")


def class_weights(counts: Sequence[int] | Tensor) -> Tensor:
    """Inverse-frequency class weights with mean 1 over all classes.

    Classes with zero training images get weight 1 (they never occur as a training target, and a huge weight
    would only matter on validation); the others share the remaining mass in proportion to 1 / count.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    present = counts > 0
    weights = torch.ones_like(counts)
    if present.any():
        inverse = 1.0 / counts[present]
        weights[present] = inverse / inverse.mean()
    return weights.float()


class LesionLoss(nn.Module):
    """Cross-entropy (``ce``), class-weighted cross-entropy (``weighted_ce``) or focal loss (``focal``).

    Focal loss is ``(1 - p_t) ** gamma * CE`` per sample, with CE including label smoothing and ``p_t`` the
    predicted probability of the true class; ``gamma=0`` gives CE. If ``weight`` is given it acts as focal's
    alpha (per sample, ``w_i = weight[y_i]``) and the mean is ``sum w_i l_i / sum w_i``: without label
    smoothing that equals torch's weighted CE at ``gamma=0`` (with smoothing, torch also weights each
    smoothing term by its own class).
    """

    weight: Tensor | None  # a registered buffer (moves with .to(), saved in the state dict)

    def __init__(
        self, kind: str = "ce", weight: Tensor | None = None, label_smoothing: float = 0.0, gamma: float = 2.0
    ):
        super().__init__()
        if kind not in LESION_LOSSES:
            raise UserError(f"unknown lesion loss {kind!r}; choose one of {', '.join(LESION_LOSSES)}")
        if kind == "weighted_ce" and weight is None:
            raise ValueError("lesion loss 'weighted_ce' needs class weights (class_weights(train counts))")
        if kind == "ce" and weight is not None:
            raise ValueError("lesion loss 'ce' takes no class weights: use 'weighted_ce'")
        self.kind, self.label_smoothing, self.gamma = kind, float(label_smoothing), float(gamma)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.kind != "focal":
            return F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing)
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        p_true = logits.float().softmax(-1).gather(1, target[:, None]).squeeze(1)
        focal = (1.0 - p_true).clamp(min=0.0) ** self.gamma * ce
        if self.weight is None:
            return focal.mean()
        w = self.weight[target]
        return (w * focal).sum() / w.sum()


def site_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over rows with a known site (``target != -1``), averaged over those rows.

    A batch without a known site gives exactly 0, still attached to the graph (its gradients are zeros).
    Written without a data-dependent branch, so it never synchronises with the GPU.
    """
    known = target != -1
    per_row = F.cross_entropy(logits, target.clamp(min=0), reduction="none")
    return (per_row * known).sum() / known.sum().clamp(min=1)


class MultiTaskLoss(nn.Module):
    """Combine lesion and site losses.

    - ``fixed``: ``w_lesion * L_lesion + w_site * L_site``.
    - ``uncertainty`` (Kendall, Gal & Cipolla 2018): learnable log-variances ``s = (s_lesion, s_site)``,
      zero at start, ``total = sum_i exp(-s_i) * L_i + s_i``: the common classification form (the paper's
      ``1/sigma^2 L + log sigma`` with ``s = log sigma^2`` has ``s_i / 2``; the factor only rescales the
      regulariser). ``w_lesion``/``w_site`` are then unused.
    - single-task (``multitask=False``): ``loss = L_lesion`` exactly, sites ignored, ``loss_site = 0``, no
      parameters, whatever the weighting.
    """

    def __init__(
        self,
        lesion_loss: LesionLoss,
        multitask: bool = True,
        weighting: str = "fixed",
        w_lesion: float = 1.0,
        w_site: float = 1.0,
    ):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise UserError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        self.lesion_loss, self.multitask, self.weighting = lesion_loss, multitask, weighting
        self.w_lesion, self.w_site = float(w_lesion), float(w_site)
        learned = multitask and weighting == "uncertainty"
        self.log_vars = nn.Parameter(torch.zeros(2)) if learned else None

    def forward(
        self, lesion_logits: Tensor, site_logits: Tensor | None, lesion_y: Tensor, site_y: Tensor | None
    ) -> dict[str, Tensor]:
        l_lesion = self.lesion_loss(lesion_logits, lesion_y)
        if not self.multitask:
            return {"loss": l_lesion, "loss_lesion": l_lesion, "loss_site": l_lesion.new_zeros(())}
        if site_logits is None or site_y is None:
            raise ValueError("a multi-task loss needs site logits and site labels")
        l_site = site_loss(site_logits, site_y)
        if self.log_vars is None:
            total = self.w_lesion * l_lesion + self.w_site * l_site
        else:
            s = self.log_vars
            total = torch.exp(-s[0]) * l_lesion + s[0] + torch.exp(-s[1]) * l_site + s[1]
        return {"loss": total, "loss_lesion": l_lesion, "loss_site": l_site}

    def task_weights(self) -> dict[str, float]:
        """Current effective weights of the two terms, for logging (``exp(-s_i)`` when learned)."""
        if not self.multitask:
            return {"lesion": 1.0, "site": 0.0}
        if self.log_vars is None:
            return {"lesion": self.w_lesion, "site": self.w_site}
        lesion, site = torch.exp(-self.log_vars.detach()).tolist()
        return {"lesion": lesion, "site": site}


def build_loss(
    *,
    kind: str = "ce",
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
    class_weights: Tensor | None = None,
    multitask: bool = True,
    weighting: str = "fixed",
    w_lesion: float = 1.0,
    w_site: float = 1.0,
) -> MultiTaskLoss:
    """The training loss from explicit settings.

    ``kind`` is the lesion loss (``LESION_LOSSES``); ``class_weights`` (from :func:`class_weights` of the
    training-set counts) is required for ``weighted_ce``, ignored otherwise (focal loss is unweighted here).
    """
    weight = class_weights if kind == "weighted_ce" else None
    lesion = LesionLoss(kind, weight=weight, label_smoothing=label_smoothing, gamma=focal_gamma)
    return MultiTaskLoss(lesion, multitask=multitask, weighting=weighting, w_lesion=w_lesion, w_site=w_site)


def make_loss(cfg: TrainConfig, info: Mapping) -> MultiTaskLoss:
    """The run's loss from its config; class weights come from the training split's counts in ``info``
    (the prepared ``dataset.json``)."""
    counts = list(info["counts"]["train"]["lesion"].values())
    return build_loss(
        kind=cfg.lesion_loss,
        multitask=cfg.multitask,
        w_lesion=cfg.w_lesion,
        w_site=cfg.w_site,
        weighting=cfg.loss_weighting,
        focal_gamma=cfg.focal_gamma,
        label_smoothing=cfg.label_smoothing,
        class_weights=class_weights(counts) if cfg.lesion_loss == "weighted_ce" else None,
    )
