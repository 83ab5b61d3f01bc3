"""Export the best retrained multi-task model as a deployable bundle.

CLI::

    skintune export --experiment NAME [--out DIR] [--seed K]

Reads ``<storage>/<name>/retrain/mtl/seed_<k>/metrics.json`` (written by ``skintune retrain``), picks the seed
with the best validation objective (``tune.metric`` / ``tune.mode`` of ``experiment.yaml``, default
``val/lesion_bacc``, max; ties go to the lowest seed) or the named one, and writes into ``DIR`` (default
``<storage>/<name>/export``)::

    model.safetensors     the weights (no pickle)
    model.torchscript.pt  the same network traced on CPU in eval mode (verified against eager at export time)
    config.json           architecture, image size, preprocessing, normalisation, provenance
    labels.json           {"lesion": [...], "site": [...]}, index order of the heads
    metrics.json          the chosen seed's val/test metrics, test mean ± sd over seeds, 95 % bootstrap CIs
                          over test images, per-site accuracies, report/ci.json when compare wrote one
                          (see :mod:`tuner.export_metrics`)
    MODEL_CARD.md         see :mod:`tuner.model_card`

The bundle is written to a temporary sibling folder and renamed into place; an existing ``--out DIR`` is only
replaced when it is empty or a previous skintune export (the default folder always: it is the experiment's own, so
a damaged bundle there is simply written again). Nothing here unpickles: weights are safetensors,
``train_state.pt`` is never read, everything else is JSON, YAML or Parquet.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_model

from trainables.checkpoint import load_meta, load_weights
from trainables.errors import UserError
from trainables.model import MultiTaskNet, build_model
from trainables.pretrained import data_config
from tuner.export_metrics import build_metrics
from tuner.model_card import render_model_card

EXPORT_FORMAT = "skintune-export"
FORMAT_VERSION = 1
WEIGHTS, TORCHSCRIPT, CONFIG, LABELS = (
    "model.safetensors",
    "model.torchscript.pt",
    "config.json",
    "labels.json",
)
METRICS, CARD = "metrics.json", "MODEL_CARD.md"
BUNDLE_FILES = (WEIGHTS, TORCHSCRIPT, CONFIG, LABELS, METRICS, CARD)
TRACE_TOLERANCE = 1e-5


def export_model(experiment_dir: str, out: str | None = None, seed: int | None = None, n_boot: int = 1000) -> Path:
    """Write the bundle of the best (or the named) MTL retrain seed into ``out``; return its path."""
    exp_dir = _local(experiment_dir)
    experiment = _read_yaml(exp_dir / "experiment.yaml")
    tune = experiment.get("tune") or {}
    metric, mode = tune.get("metric", "val/lesion_bacc"), tune.get("mode", "max")
    runs = find_seeds(exp_dir)
    chosen = choose_seed(runs, metric, mode, seed)
    run = runs[chosen]
    ckpt = _checkpoint_dir(exp_dir, chosen, run)
    meta = load_meta(ckpt)
    info = _dataset_info(exp_dir, experiment, meta)
    model, config = _load_model(ckpt, meta, info)
    config.update(experiment=experiment.get("name", exp_dir.name), seed=chosen, checkpoint=str(ckpt))
    labels = {
        "lesion": list(meta["lesion_classes"]),
        "site": list(meta["site_classes"]) if model.multitask else [],
    }
    metrics = build_metrics(exp_dir, runs, chosen, labels, n_boot)
    metrics["selected_by"] = {"metric": metric, "mode": mode, "value": run["val"].get(metric), "named": seed}

    target = Path(out).expanduser() if out else exp_dir / "export"
    _check_target(target, named=bool(out))
    for kind in ("tmp", "old"):  # what a killed export left beside the bundle
        for stale in target.parent.glob(f".{target.name}.{kind}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        save_model(model, str(tmp / WEIGHTS))
        os.chmod(tmp / WEIGHTS, 0o644)  # safetensors writes 0600; a bundle is meant to be shared
        trace_to(model, config["image_size"], tmp / TORCHSCRIPT)
        for name, data in ((CONFIG, config), (LABELS, labels), (METRICS, metrics)):
            (tmp / name).write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
        (tmp / CARD).write_text(render_model_card(config, labels, metrics, info, experiment))
        _swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def find_seeds(exp_dir: Path) -> dict[int, dict]:
    """``{seed: metrics.json}`` of every finished MTL retrain seed."""
    root = exp_dir / "retrain" / "mtl"
    runs = {}
    for path in sorted(root.glob("seed_*/metrics.json")):
        try:
            data = json.loads(path.read_text())
            runs[int(data.get("seed", path.parent.name.removeprefix("seed_")))] = data
        except (ValueError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not a retrain metrics file ({exc}); rerun `skintune retrain`") from exc
    if not runs:
        raise UserError(
            f"no retrained model under {root}: run `skintune retrain --experiment {exp_dir.name} "
            f"--storage {exp_dir.parent}` first (export takes the best retrained seed)"
        )
    return runs


def choose_seed(runs: dict[int, dict], metric: str, mode: str, seed: int | None) -> int:
    if seed is not None:
        if seed not in runs:
            raise UserError(f"no retrained MTL seed {seed}; available seeds: {', '.join(map(str, sorted(runs)))}")
        return seed
    scored = {k: r.get("val", {}).get(metric) for k, r in runs.items() if not r.get("diverged")}
    scored = {k: float(v) for k, v in scored.items() if v is not None and np.isfinite(v)}
    if not scored:
        raise UserError(f"no retrained seed reports a finite {metric!r} without diverging; name one with --seed")
    sign = -1.0 if mode == "max" else 1.0
    return min(scored, key=lambda k: (sign * scored[k], k))


def trace_to(model: MultiTaskNet, image_size: int, path: Path) -> None:
    """Trace ``model`` on CPU in eval mode, save it, reload it and check it against eager."""
    model = model.cpu().eval()
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=r"`torch\.jit", category=FutureWarning)
        torch.jit.save(torch.jit.trace(model, example, check_trace=False, _store_inputs=False), str(path))
        reloaded = torch.jit.load(str(path), map_location="cpu")
        eager, traced = model(example), reloaded(example)
    diff = float((eager[0] - traced[0]).abs().max())
    if eager[1] is not None:
        diff = max(diff, float((eager[1] - traced[1]).abs().max()))
    if not diff <= TRACE_TOLERANCE:
        raise RuntimeError(f"traced model differs from eager by {diff:.2e} (> {TRACE_TOLERANCE}); not exported")


def _load_model(ckpt: Path, meta: dict, info: dict | None) -> tuple[MultiTaskNet, dict]:
    cfg = meta.get("config", {})
    backbone = cfg.get("backbone", "tf_efficientnet_lite0")
    multitask = bool(cfg.get("multitask", True)) and bool(meta.get("site_classes"))
    prep = (info or {}).get("prepare_options", {})
    image_size = cfg.get("image_size") or prep.get("image_size")
    if not image_size:
        raise UserError(f"{ckpt}: image_size is not set and no dataset.json was found to take it from")
    n_site = len(meta["site_classes"]) if multitask else 0
    model = build_model(backbone, False, len(meta["lesion_classes"]), n_site, float(cfg.get("dropout", 0.0)))
    load_weights(ckpt, model)
    norm = data_config(backbone)
    config = {
        "format": EXPORT_FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "MultiTaskNet",
        "backbone": backbone,
        "multitask": multitask,
        "num_lesion_classes": len(meta["lesion_classes"]),
        "num_site_classes": n_site,
        "dropout": float(cfg.get("dropout", 0.0)),
        "image_size": int(image_size),
        "resize_size": int(prep.get("image_size") or image_size),
        "jpeg_quality": int(prep.get("quality") or 90),
        "mean": list(norm["mean"]),
        "std": list(norm["std"]),
        "preprocessing": "upright RGB; shorter side -> resize_size (bicubic); JPEG at jpeg_quality (as "
        "prepare); shorter side -> image_size (bilinear, antialias); center crop image_size; /255; "
        "(x - mean) / std",
        "outputs": "(lesion_logits [B, num_lesion_classes], site_logits [B, num_site_classes]); softmax each",
        "weights_source": meta.get("weights_source"),
        "dataset_fingerprint": meta.get("dataset_fingerprint"),
        "train_config": cfg,
        "torch_version": torch.__version__,
    }
    return model.eval(), config


def _dataset_info(exp_dir: Path, experiment: dict, meta: dict) -> dict | None:
    data = experiment.get("data") or {}
    candidates = [data.get("prepared"), exp_dir / "prepared", (meta.get("config") or {}).get("prepared")]
    for folder in candidates:
        if folder and (Path(folder).expanduser() / "dataset.json").is_file():
            return json.loads((Path(folder).expanduser() / "dataset.json").read_text())
    return None


def _checkpoint_dir(exp_dir: Path, seed: int, run: dict) -> Path:
    seed_dir = exp_dir / "retrain" / "mtl" / f"seed_{seed}"
    named = run.get("checkpoint")
    for path in ([seed_dir / Path(named).expanduser()] if named else []) + [seed_dir / "checkpoint"]:
        if (path / WEIGHTS).is_file():
            return path
    raise UserError(f"{seed_dir}: checkpoint {named or seed_dir / 'checkpoint'} is missing; rerun retrain")


def is_export(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG).read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(target: Path, named: bool = True) -> None:
    """A folder the user ``named`` (--out) is replaced only when it is empty or a skintune export; the default
    ``<experiment>/export`` is skintune's own, so a bundle damaged there (e.g. its config.json deleted) is
    replaced too."""
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file; --out needs a folder")
    if named and target.is_dir() and any(target.iterdir()) and not is_export(target):
        raise UserError(f"{target} is not empty and not a skintune export; pick an empty or new --out folder")


def _swap_into_place(tmp: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _local(experiment_dir: str | Path) -> Path:
    if "://" in str(experiment_dir):
        raise UserError(f"{experiment_dir}: export reads a local experiment folder; copy it down first")
    path = Path(experiment_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: no such experiment folder; run `skintune tune` and `skintune retrain` first")
    return path


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
