"""The multi-task network: one shared timm backbone, dropout, a lesion head and (optionally) a body-site head.

``build_model`` builds the network from explicit sizes (from a training config, use
:func:`trainables.factory.build_parts`); ``param_groups`` gives AdamW parameter groups with separate learning rates
for backbone and heads. The single-task baseline is the same network with ``num_site_classes=0``: its
``site_head`` is ``None`` and ``forward`` returns ``(lesion_logits, None)``.

With ``metadata_inputs`` (``train.metadata_inputs``), a metadata branch encodes the raw patient codes
(:func:`trainables.metadata.encode_metadata`), runs them through a small MLP and concatenates the result with the
pooled image features before the lesion head; the site head always predicts from the image features alone, so
with the site among the inputs it cannot copy its own input. Without them the network is exactly the image-only
one (same parameters, same outputs): ``forward(x, meta)`` then ignores ``meta``.

TorchScript: ``torch.jit.trace(model, x)`` works for both variants (tuples trace cleanly). A trace cannot
return ``None``, so a traced single-task model returns an empty ``(batch, 0)`` site tensor instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import timm
import torch
from torch import Tensor, nn

from trainables.metadata import all_missing, encode_metadata, encoded_width, ordered
from trainables.pretrained import RANDOM_INIT, check_backbone, load_pretrained


class MultiTaskNet(nn.Module):
    """``backbone`` (timm, ``num_classes=0``) → ``dropout`` → ``lesion_head`` and ``site_head`` (Linear); with
    ``metadata_inputs``, ``metadata_mlp`` (encoded metadata → ``fusion_width``) joins the lesion head's input.
    ``num_sites`` is the number of site classes of the dataset (the site one-hot's width), whether or not the
    network has a site head."""

    def __init__(
        self,
        backbone: nn.Module,
        num_lesion_classes: int,
        num_site_classes: int,
        dropout: float,
        metadata_inputs: tuple[str, ...] = (),
        num_sites: int = 0,
        fusion_width: int = 64,
    ):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        # Width of the pooled output: MobileNetV3/V4 add a head conv after the last stage, so ``num_features``
        # (the stage width) is not it; timm calls the output width ``head_hidden_size``.
        # (an nn.Module attribute reads as Tensor | Module to a type checker; timm sets both as ints)
        width = cast(int, getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        self.metadata_inputs = ordered(metadata_inputs)
        self.num_sites = num_sites
        fused = fusion_width if self.metadata_inputs else 0
        self.lesion_head = nn.Linear(width + fused, num_lesion_classes)
        self.site_head = nn.Linear(width, num_site_classes) if num_site_classes > 0 else None
        # created after the heads: an image-only network draws the same initial weights as before this branch existed
        self.metadata_mlp = (
            nn.Sequential(
                nn.Linear(encoded_width(self.metadata_inputs, num_sites), fusion_width),
                nn.ReLU(),
                nn.Linear(fusion_width, fusion_width),
                nn.ReLU(),
            )
            if self.metadata_inputs
            else None
        )
        self.weights_source = RANDOM_INIT  # set by build_model: where the backbone weights came from

    @property
    def multitask(self) -> bool:
        return self.site_head is not None

    def forward(self, x: Tensor, meta: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Return ``(lesion_logits, site_logits)``; ``site_logits`` is ``None`` without a site head.

        ``meta``: the raw metadata codes, ``(batch, 3)`` (:mod:`trainables.metadata`); ignored by an image-only
        network; ``None`` for a metadata network means every field missing."""
        features = self.dropout(self.backbone(x))
        fused = features
        if self.metadata_mlp is not None:
            if meta is None:
                meta = all_missing(x.shape[0], x.device)
            encoded = encode_metadata(meta, self.metadata_inputs, self.num_sites).to(features.dtype)
            fused = torch.cat([features, self.metadata_mlp(encoded)], 1)
        lesion = self.lesion_head(fused)
        if self.site_head is not None:
            return lesion, self.site_head(features)  # image features only: never the site input
        if torch.jit.is_tracing():  # traced graphs may only return tensors
            return lesion, lesion.new_zeros((lesion.shape[0], 0))
        return lesion, None


def build_model(
    backbone: str,
    pretrained: bool,
    num_lesion_classes: int,
    num_site_classes: int,
    dropout: float,
    weights_file: str | None = None,
    metadata_inputs: Sequence[str] = (),
    num_sites: int = 0,
    fusion_width: int = 64,
) -> MultiTaskNet:
    """Create the network; backbone weights come from :func:`trainables.pretrained.load_pretrained`.
    ``metadata_inputs`` (with the dataset's ``num_sites`` and the MLP's ``fusion_width``): the metadata branch.

    Raises :class:`UserError` for an unknown backbone name (with close names) or weights that do not load.
    """
    check_backbone(backbone)
    if num_lesion_classes < 1 or num_site_classes < 0:
        got = f"{num_lesion_classes} lesion, {num_site_classes} site"
        raise ValueError(f"need >= 1 lesion and >= 0 site classes, got {got}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    trunk = timm.create_model(backbone, pretrained=False, num_classes=0)
    source = load_pretrained(backbone, trunk, weights_file, pretrained)
    model = MultiTaskNet(
        trunk,
        num_lesion_classes,
        num_site_classes,
        dropout,
        metadata_inputs=tuple(metadata_inputs),
        num_sites=num_sites,
        fusion_width=fusion_width,
    )
    model.weights_source = source
    return model


def param_groups(
    model: MultiTaskNet,
    lr_backbone: float,
    lr_head: float,
    weight_decay: float,
    extra_head_params: Iterable[nn.Parameter] = (),
) -> list[dict]:
    """AdamW parameter groups: backbone and heads at their own learning rates, each split into decayed weights
    and undecayed biases / norm weights (every parameter with ``ndim <= 1``).

    ``extra_head_params`` joins the head groups (scalars among them are never decayed). The training loop does not
    use it: it adds ``MultiTaskLoss.parameters()`` as a group of its own (``trainables.train_loop.setup``). Empty
    groups are left out; each group has a ``name`` (``backbone``, ``backbone_no_decay``, ``head``, ``head_no_decay``)
    for logging.
    """
    buckets: dict[str, list[nn.Parameter]] = {n: [] for n in ("backbone", "head")}
    buckets.update({f"{n}_no_decay": [] for n in ("backbone", "head")})
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    for part, params in (("backbone", model.backbone.parameters()), ("head", [*heads, *extra_head_params])):
        for p in params:
            if p.requires_grad:
                buckets[part if p.ndim > 1 else f"{part}_no_decay"].append(p)
    groups = []
    for name, params in buckets.items():
        lr = lr_backbone if name.startswith("backbone") else lr_head
        wd = 0.0 if name.endswith("no_decay") else weight_decay
        if params:
            groups.append({"name": name, "params": params, "lr": lr, "weight_decay": wd})
    return groups
