"""Predict lesion and body-site probabilities with an export bundle (see :mod:`tuner.export`).

CLI::

    skintune predict --model DIR IMAGE... [--output FILE.csv|FILE.json] [--backend safetensors|torchscript]

Per image: the top lesion class and its probability, the top site and its probability, and every class's
probability. Without ``--output`` a short table is printed; ``.csv`` has one row per image with columns
``path, lesion, lesion_prob, site, site_prob, lesion:<class>..., site:<class>...``; ``.json`` is a list with
one object per image (the dicts of :func:`predict_images`).

Preprocessing is the validation preprocessing, step for step: ``prepare_image`` (upright RGB, shorter side
to the prepared size, JPEG at the prepared quality, exactly as ``skintune prepare`` stored the validation
images), ``decode_jpeg`` as the loader does, then ``build_transforms(image_size, mean, std, train=False)``.

The bundle's files and their typed contents are :mod:`tuner.bundle`'s. Safety: ``config.json`` and ``labels.json``
are JSON; the safetensors backend builds the architecture (:func:`trainables.factory.build_parts`, as training
did) and reads raw tensors (no pickle anywhere); the TorchScript backend uses ``torch.jit.load``, whose restricted
loader resolves only TorchScript types, and any failure to load becomes a :class:`UserError`.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model
from torchvision.io import ImageReadMode, decode_jpeg

from trainables.data.images import BadImage, prepare_image
from trainables.data.loader import build_transforms
from trainables.errors import UserError
from trainables.factory import build_parts
from tuner.bundle import BACKENDS, CONFIG, LABELS, BundleConfig, BundleLabels, first_line, read_bundle_files


@dataclass
class Bundle:
    directory: Path
    backend: str
    config: BundleConfig
    lesion_classes: list[str]
    site_classes: list[str]
    model: Callable = field(repr=False)
    transform: Callable = field(repr=False)

    def preprocess(self, path: str | Path) -> torch.Tensor:
        """The normalised ``(3, image_size, image_size)`` input for one image file."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such image file")
        try:
            size = self.config.resize_size or self.config.image_size  # validation already set it so
            data = prepare_image(path, size, self.config.jpeg_quality)
        except BadImage as exc:
            raise UserError(f"{path}: {exc}; predict needs a readable JPEG/PNG/TIFF/BMP image") from None
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        return self.transform(image)


def load_bundle(directory: str | Path, backend: str = "safetensors") -> Bundle:
    """Open an export bundle with the ``safetensors`` (eager model) or ``torchscript`` backend."""
    directory = Path(directory).expanduser()
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if not directory.is_dir():
        raise UserError(f"{directory}: no such model folder; write one with `skintune export`")
    missing = [n for n in (CONFIG, LABELS, BACKENDS[backend]) if not (directory / n).is_file()]
    if missing:
        raise UserError(f"{directory} is not a complete skintune export: {', '.join(missing)} missing")
    config, labels = read_bundle_files(directory)
    # the preprocessing the bundle records (not the backbone's current timm defaults): the exported contract
    transform = build_transforms(config.image_size, config.mean, config.std, train=False)
    path = directory / BACKENDS[backend]
    model = _load_eager(path, config, labels) if backend == "safetensors" else _load_torchscript(path)
    return Bundle(directory, backend, config, labels.lesion, labels.site, model, transform)


def _load_eager(path: Path, config: BundleConfig, labels: BundleLabels) -> torch.nn.Module:
    model = build_parts(config.train_config_of_network(), labels.dataset_info()).model
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({first_line(exc)}); re-export") from None
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not fit {config.backbone} (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); re-export the model"
        )
    return model.eval()


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit", category=FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # not a TorchScript archive, tampered, truncated: all refused the same way
        raise UserError(f"{path}: refused to load as TorchScript ({first_line(exc)}); re-export") from None
    return model.eval()


@torch.no_grad()
def predict_images(bundle: Bundle, paths: Sequence[str | Path], batch_size: int = 16) -> list[dict]:
    """Per image: ``path``, ``lesion``/``lesion_prob`` (top class), ``site``/``site_prob`` (``None`` without a
    site head), and ``lesion_probs``/``site_probs`` (class → probability)."""
    if not paths:
        raise UserError("no images given; pass one or more image files")
    rows = []
    for start in range(0, len(paths), batch_size):
        chunk = [Path(p) for p in paths[start : start + batch_size]]
        batch = torch.stack([bundle.preprocess(p) for p in chunk])
        lesion_logits, site_logits = bundle.model(batch)
        lesion_p = torch.softmax(lesion_logits.double(), dim=1)
        has_site = site_logits is not None and site_logits.shape[1] > 0 and bundle.site_classes
        site_p = torch.softmax(site_logits.double(), dim=1) if has_site else None
        for i, path in enumerate(chunk):
            rows.append(
                _row(
                    path,
                    lesion_p[i],
                    bundle.lesion_classes,
                    None if site_p is None else site_p[i],
                    bundle.site_classes,
                )
            )
    return rows


def _row(path: Path, lesion_p, lesion_names, site_p, site_names) -> dict:
    lesion = dict(zip(lesion_names, lesion_p.tolist(), strict=True))
    site = dict(zip(site_names, site_p.tolist(), strict=True)) if site_p is not None else {}
    top_lesion = max(lesion, key=lesion.__getitem__)
    top_site = max(site, key=site.__getitem__) if site else None
    return {
        "path": str(path),
        "lesion": top_lesion,
        "lesion_prob": lesion[top_lesion],
        "site": top_site,
        "site_prob": site[top_site] if top_site is not None else None,
        "lesion_probs": lesion,
        "site_probs": site,
    }


def write_predictions(rows: list[dict], bundle: Bundle, output: str | Path) -> Path:
    """Write ``rows`` as ``.csv`` (one column per class, ``lesion:``/``site:`` prefixed) or ``.json``."""
    output = Path(output).expanduser()
    if output.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"{output}: --output must end in .csv or .json")
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".json":
        output.write_text(json.dumps(rows, indent=2) + "\n")
        return output
    columns = ["path", "lesion", "lesion_prob", "site", "site_prob"]
    columns += [f"lesion:{c}" for c in bundle.lesion_classes] + [f"site:{c}" for c in bundle.site_classes]
    with output.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            flat = {k: row[k] for k in columns[:5]}
            flat.update({f"lesion:{k}": v for k, v in row["lesion_probs"].items()})
            flat.update({f"site:{k}": v for k, v in row["site_probs"].items()})
            writer.writerow(flat)
    return output


def format_predictions(rows: list[dict]) -> str:
    """A short human-readable table: path, top lesion class (prob), top site (prob)."""
    width = max(len(r["path"]) for r in rows)
    lines = []
    for r in rows:
        site = f"  site {r['site']} ({r['site_prob']:.3f})" if r["site"] is not None else ""
        lines.append(f"{r['path']:<{width}}  lesion {r['lesion']} ({r['lesion_prob']:.3f}){site}")
    return "\n".join(lines)


def run_predict(
    model_dir: str | Path,
    images: Sequence[str | Path],
    output: str | Path | None = None,
    backend: str = "safetensors",
    batch_size: int = 16,
) -> list[dict]:
    """What ``skintune predict`` does: load, predict, then print the table or write ``output``."""
    bundle = load_bundle(model_dir, backend)
    rows = predict_images(bundle, images, batch_size)
    if output:
        print(f"predict: wrote {len(rows)} prediction(s) to {write_predictions(rows, bundle, output)}")
    else:
        print(format_predictions(rows))
    return rows
