"""Export the best retrained model of an arm (by default the multi-task one) as a deployable bundle.

CLI::

    skintune export --experiment NAME [--out DIR] [--seed K] [--arm mtl|meta|mtl_meta|single_task]

Reads ``<storage>/<name>/retrain/<arm>/seed_<k>/metrics.json`` (written by ``skintune retrain``; ``--arm``
default ``mtl``; ``meta`` / ``mtl_meta`` export a model with metadata inputs), picks the seed
with the best validation objective (``tune.metric`` / ``tune.mode`` of ``experiment.yaml``, default
``val/lesion_bacc``, max; ties go to the lowest seed) or the named one, and writes into ``DIR`` (default
``<storage>/<name>/export``) the files of :mod:`tuner.bundle`, the bundle's contract::

    model.safetensors     the weights (no pickle)
    model.torchscript.pt  the same network traced on CPU in eval mode (verified against eager at export time);
                          a model with metadata inputs is traced with two inputs, (image, meta raw codes)
    config.json           architecture, image size, preprocessing, normalisation, metadata inputs, provenance
                          (BundleConfig)
    labels.json           {"lesion": [...], "site": [...]}, index order of the heads (BundleLabels)
    metrics.json          the chosen seed's val/test metrics, test mean ± sd over seeds, 95 % bootstrap CIs
                          over test images, per-site accuracies, report/ci.json when compare wrote one
                          (see :mod:`tuner.export_metrics`)
    MODEL_CARD.md         see :mod:`tuner.model_card`

``experiment.yaml`` is read with :func:`tuner.config.load_experiment` and the checkpoint's training config with
:func:`trainables.config.parse_train_config`, so their defaults are the typed configs' own; the network is
rebuilt by :func:`trainables.factory.build_parts`, as training built it.

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
from safetensors.torch import save_model

from trainables.checkpoint import load_meta, load_weights
from trainables.config import TrainConfig, parse_train_config
from trainables.data.loader import ShardDataset, build_transforms
from trainables.errors import UserError
from trainables.factory import build_parts
from trainables.metadata import RAW_FIELDS
from trainables.model import MultiTaskNet
from tuner.bundle import (
    CARD,
    CONFIG,
    INPUTS_METADATA,
    LABELS,
    METRICS,
    TORCHSCRIPT,
    WEIGHTS,
    BundleConfig,
    BundleLabels,
    is_bundle,
)
from tuner.config import ExperimentConfig, TuneSection, load_experiment
from tuner.export_metrics import build_metrics, calibration_entry
from tuner.model_card import render_model_card

TRACE_TOLERANCE = 1e-5


def export_model(
    experiment_dir: str, out: str | None = None, seed: int | None = None, n_boot: int = 1000, arm: str = "mtl"
) -> Path:
    """Write the bundle of the best (or the named) retrain seed of ``arm`` into ``out``; return its path."""
    exp_dir = _local(experiment_dir)
    runs = find_seeds(exp_dir, arm)
    experiment = _read_experiment(exp_dir)
    tune = experiment.tune if experiment else TuneSection()  # no experiment.yaml: the default objective
    metric, mode = tune.metric, tune.mode
    chosen = choose_seed(runs, metric, mode, seed)
    run = runs[chosen]
    ckpt = _checkpoint_dir(exp_dir, chosen, run, arm)
    meta = load_meta(ckpt)
    cfg = parse_train_config(meta.get("config") or {}, source=f"{ckpt}/meta.json")
    prepared, info = _prepared(exp_dir, experiment, cfg)
    model, config = _load_model(ckpt, meta, cfg, info)
    name = experiment.name if experiment else exp_dir.name
    labels = BundleLabels(lesion=meta["lesion_classes"], site=meta["site_classes"] if model.multitask else [])
    metrics = build_metrics(exp_dir, runs, chosen, labels.model_dump(), n_boot, arm=arm)
    metrics["selected_by"] = {"metric": metric, "mode": mode, "value": run["val"].get(metric), "named": seed}
    val, reason = _val_logits(model, config, prepared, info, meta)
    calibration = calibration_entry(val, reason, exp_dir / "retrain" / arm / f"seed_{chosen}" / "predictions.parquet")
    metrics["calibration"] = calibration
    update = {"experiment": name, "seed": chosen, "checkpoint": str(ckpt), "temperature": calibration["temperature"]}
    config = config.model_copy(update=update)

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
        trace_to(model, config.image_size, tmp / TORCHSCRIPT)
        for name, data in ((CONFIG, config.model_dump()), (LABELS, labels.model_dump()), (METRICS, metrics)):
            (tmp / name).write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
        (tmp / CARD).write_text(render_model_card(config, labels, metrics, info, experiment))
        _swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def find_seeds(exp_dir: Path, arm: str = "mtl") -> dict[int, dict]:
    """``{seed: metrics.json}`` of every finished retrain seed of ``arm``."""
    if not arm or "/" in arm or arm.startswith("."):
        raise UserError(f"--arm {arm!r}: not an arm name; use e.g. mtl, meta, mtl_meta or single_task")
    root = exp_dir / "retrain" / arm
    runs = {}
    for path in sorted(root.glob("seed_*/metrics.json")):
        try:
            data = json.loads(path.read_text())
            runs[int(data.get("seed", path.parent.name.removeprefix("seed_")))] = data
        except (ValueError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not a retrain metrics file ({exc}); rerun `skintune retrain`") from exc
    if not runs:
        others = sorted(p.parent.parent.name for p in (exp_dir / "retrain").glob("*/seed_*/metrics.json"))
        if others:
            raise UserError(
                f"no retrained model under {root}; this experiment has retrained arm(s) "
                f"{', '.join(dict.fromkeys(others))}: name one with --arm"
            )
        raise UserError(
            f"no retrained model under {root}: run `skintune retrain --experiment {exp_dir.name} "
            f"--storage {exp_dir.parent}` first (export takes the best retrained seed)"
        )
    return runs


def choose_seed(runs: dict[int, dict], metric: str, mode: str, seed: int | None) -> int:
    if seed is not None:
        if seed not in runs:
            raise UserError(
                f"no retrained seed {seed} of this arm; available seeds: {', '.join(map(str, sorted(runs)))}"
            )
        return seed
    scored = {k: r.get("val", {}).get(metric) for k, r in runs.items() if not r.get("diverged")}
    scored = {k: float(v) for k, v in scored.items() if v is not None and np.isfinite(v)}
    if not scored:
        raise UserError(f"no retrained seed reports a finite {metric!r} without diverging; name one with --seed")
    sign = -1.0 if mode == "max" else 1.0
    return min(scored, key=lambda k: (sign * scored[k], k))


def trace_to(model: MultiTaskNet, image_size: int, path: Path) -> None:
    """Trace ``model`` on CPU in eval mode, save it, reload it and check it against eager.

    A model with metadata inputs is traced with two inputs, ``(image, meta)`` (raw codes, :mod:`trainables.metadata`),
    and checked on examples with every field present, every field missing and a mix, so that the missing-value path
    is part of what is verified."""
    model = model.cpu().eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, image_size, image_size, generator=gen)
    inputs: tuple[torch.Tensor, ...] = (example,)
    checks: list[tuple[torch.Tensor, ...]] = [(example,)]
    if model.metadata_inputs:
        sites = max(model.num_sites, 1)
        present = torch.tensor([[0.0, 35.0, 1.0], [float(sites - 1), 70.0, 0.0]])
        nan = float("nan")
        mixed = torch.tensor([[-1.0, 52.0, -1.0], [float(sites - 1), nan, 1.0]])
        missing = torch.tensor([[-1.0, nan, -1.0]] * 2)
        assert present.shape[1] == len(RAW_FIELDS)
        inputs = (example, present)
        checks = [(example, present), (example, mixed), (example, missing)]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=r"`torch\.jit", category=FutureWarning)
        torch.jit.save(torch.jit.trace(model, inputs, check_trace=False, _store_inputs=False), str(path))
        reloaded = torch.jit.load(str(path), map_location="cpu")
        diff = 0.0
        for args in checks:
            eager, traced = model(*args), reloaded(*args)
            diff = max(diff, float((eager[0] - traced[0]).abs().max()))
            if eager[1] is not None:
                diff = max(diff, float((eager[1] - traced[1]).abs().max()))
    if not diff <= TRACE_TOLERANCE:
        raise RuntimeError(f"traced model differs from eager by {diff:.2e} (> {TRACE_TOLERANCE}); not exported")


def _load_model(ckpt: Path, meta: dict, cfg: TrainConfig, info: dict | None) -> tuple[MultiTaskNet, BundleConfig]:
    """The checkpoint's network (eval mode) and the bundle's config.json; the class lists are the checkpoint's,
    the prepared image size and JPEG quality those of ``info`` (the dataset.json, when found)."""
    prep = (info or {}).get("prepare_options") or {}
    classes = {"lesion_classes": meta["lesion_classes"], "site_classes": meta["site_classes"]}
    try:
        parts = build_parts(cfg, {**(info or {}), **classes})
    except UserError as exc:
        raise UserError(f"{ckpt}: {exc}") from None
    load_weights(ckpt, parts.model)
    config = BundleConfig(
        backbone=cfg.backbone,
        multitask=parts.model.multitask,
        num_lesion_classes=len(meta["lesion_classes"]),
        num_site_classes=len(meta["site_classes"]) if parts.model.multitask else 0,
        dropout=cfg.dropout,
        image_size=parts.image_size,
        resize_size=int(prep.get("image_size") or parts.image_size),
        jpeg_quality=int(prep.get("quality") or 90),
        mean=list(parts.mean),
        std=list(parts.std),
        weights_source=meta.get("weights_source"),
        dataset_fingerprint=meta.get("dataset_fingerprint"),
        train_config=cfg.model_dump(),
        torch_version=torch.__version__,
        **_metadata_fields(parts.metadata_inputs, cfg.fusion_width, meta["site_classes"]),
    )
    return parts.model.eval(), config


def _metadata_fields(inputs: tuple[str, ...], fusion_width: int, site_classes: list[str]) -> dict:
    """The bundle's metadata-input fields; none (the image-only defaults) for an image-only network."""
    if not inputs:
        return {}
    return {
        "inputs": INPUTS_METADATA,
        "metadata_inputs": list(inputs),
        "fusion_width": fusion_width,
        "metadata_sites": list(site_classes) if "site" in inputs else [],
    }


def _prepared(exp_dir: Path, experiment: ExperimentConfig | None, cfg: TrainConfig) -> tuple[Path | None, dict | None]:
    """The prepared dataset's folder and ``dataset.json`` (the experiment's, the experiment folder's ``prepared/``
    or the checkpoint config's), or ``(None, None)`` when none is found locally."""
    candidates = [experiment.data.prepared if experiment else None, exp_dir / "prepared", cfg.prepared]
    for folder in candidates:
        if folder and "://" not in str(folder) and (Path(folder).expanduser() / "dataset.json").is_file():
            path = Path(folder).expanduser()
            return path, json.loads((path / "dataset.json").read_text())
    return None, None


@torch.no_grad()
def _val_logits(
    model: MultiTaskNet, config: BundleConfig, prepared: Path | None, info: dict | None, meta: dict
) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
    """``((lesion logits, labels), None)`` of the validation split, with the bundle's preprocessing and the images'
    metadata as recorded (on CPU); ``(None, reason)`` when there is no validation split to fit a temperature on."""
    if prepared is None or info is None:
        return None, "no prepared dataset (dataset.json) found at export: temperature left at 1"
    trained_on, found = meta.get("dataset_fingerprint"), info.get("fingerprint")
    if trained_on and found and trained_on != found:
        return None, f"{prepared} is not the dataset the model was trained on (fingerprint): temperature left at 1"
    if not any(s.get("split") == "val" for s in info.get("shards") or []):
        return None, f"{prepared} has no validation split: temperature left at 1"
    transform = build_transforms(config.image_size, config.mean, config.std, train=False)
    dataset = ShardDataset(prepared, "val", transform, with_meta=bool(model.metadata_inputs))
    model = model.cpu().eval()
    logits, labels = [], []
    for images, lesion, _site, *codes in torch.utils.data.DataLoader(dataset, batch_size=64):
        lesion_logits, _ = model(images, codes[0]) if codes else model(images)
        logits.append(lesion_logits.double().numpy())
        labels.append(lesion.numpy())
    if not labels:
        return None, f"{prepared}: the validation split is empty: temperature left at 1"
    return (np.concatenate(logits), np.concatenate(labels)), None


def _checkpoint_dir(exp_dir: Path, seed: int, run: dict, arm: str = "mtl") -> Path:
    seed_dir = exp_dir / "retrain" / arm / f"seed_{seed}"
    named = run.get("checkpoint")
    for path in ([seed_dir / Path(named).expanduser()] if named else []) + [seed_dir / "checkpoint"]:
        if (path / WEIGHTS).is_file():
            return path
    raise UserError(f"{seed_dir}: checkpoint {named or seed_dir / 'checkpoint'} is missing; rerun retrain")


def _check_target(target: Path, named: bool = True) -> None:
    """A folder the user ``named`` (--out) is replaced only when it is empty or a skintune export; the default
    ``<experiment>/export`` is skintune's own, so a bundle damaged there (e.g. its config.json deleted) is
    replaced too."""
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file; --out needs a folder")
    if named and target.is_dir() and any(target.iterdir()) and not is_bundle(target):
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


def _read_experiment(exp_dir: Path) -> ExperimentConfig | None:
    """The experiment's ``experiment.yaml`` (as ``skintune tune`` wrote it), typed; None where there is none."""
    path = exp_dir / "experiment.yaml"
    return load_experiment(path) if path.is_file() else None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
