"""Predict lesion and body-site probabilities with an export bundle (see :mod:`tuner.export`).

CLI::

    skintune predict --model DIR IMAGE... [--output FILE.csv|FILE.json] [--backend safetensors|torchscript]
                     [--metadata FILE.csv | --site NAME --age YEARS --sex female|male]
                     [--format default|isic] [--tta N]

Per image: the top lesion class and its probability, the top site and its probability, and every class's
probability. Without ``--output`` a short table is printed; ``.csv`` has one row per image with columns
``path, lesion, lesion_prob, site, site_prob, lesion:<class>..., site:<class>...``; ``.json`` is a list with
one object per image (the dicts of :func:`predict_images`). ``--format isic`` writes (or prints) the ISIC
challenge submission layout instead (:mod:`tuner.submission`): ``image`` (the file name without suffix), then one
lesion probability column per class in the ISIC 2019 order, plus ``UNK`` = 0 for an ISIC 2019-vocabulary model.

The lesion logits are divided by the bundle's ``temperature`` (temperature scaling, fitted on the validation
split at export; 1 for older bundles) before the softmax. ``--tta N`` averages the probabilities over N flips /
90-degree rotations of each image (:mod:`trainables.tta`; 1, the default, is no TTA).

Metadata inputs. A bundle whose ``config.json`` lists ``metadata_inputs`` (site, age, sex) takes them besides the
image: from ``--metadata FILE.csv`` (columns ``image, site, age, sex``; ``image`` is matched to each image's file
name, or its name without the suffix; ``site``, ``age``, ``sex`` columns may be left out or cells left empty) or
from ``--site``/``--age``/``--sex`` (one value for every image). Values are read by the adapters' own parsers
(:func:`~trainables.data.adapters._common.parse_age`, ``parse_sex``; sites from the bundle's ``metadata_sites``),
so the vocabulary is the training data's; a bad value is a one-line :class:`UserError` naming the file, line or
flag. A field that is not given is missing: predict says so per field and image, and the network takes its
missing-value path (the encoding of a blanked field, as :func:`trainables.metadata.blank_metadata` makes in
training). The CSV / JSON output then also records each image's inputs (``input:<field>`` columns). An image-only
bundle given metadata warns in one line that it is ignored.

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
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model
from torchvision.io import ImageReadMode, decode_jpeg

from trainables.data.adapters._common import check_ids, encode, line, load_csv, parse_age, parse_sex, vocabulary
from trainables.data.images import BadImage, prepare_image
from trainables.data.loader import build_transforms
from trainables.data.schema import MISSING_VALUES, SEX_CLASSES
from trainables.errors import UserError, where
from trainables.factory import build_parts
from trainables.metadata import MISSING_CODE, RAW_FIELDS
from trainables.tta import check_tta, predict_tta
from tuner.bundle import BACKENDS, CONFIG, LABELS, BundleConfig, BundleLabels, first_line, read_bundle_files
from tuner.submission import submission_frame, write_submission

CSV_COLUMNS = ("image", *RAW_FIELDS)  # --metadata FILE.csv: image, site, age, sex
FORMATS = ("default", "isic")  # --format: skintune's own table/CSV/JSON, or the ISIC challenge submission CSV


@dataclass
class Bundle:
    directory: Path
    backend: str
    config: BundleConfig
    lesion_classes: list[str]
    site_classes: list[str]
    model: Callable = field(repr=False)
    transform: Callable = field(repr=False)

    @property
    def metadata_inputs(self) -> tuple[str, ...]:
        """The metadata the network takes besides the image (site, age, sex order); empty: image only."""
        return tuple(f for f in RAW_FIELDS if f in self.config.metadata_inputs)

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
        raise UserError(
            f"--model {directory} is not a complete skintune export: {', '.join(missing)} missing; point --model "
            "at the folder `skintune export --out` wrote, or export the model again"
        )
    config, labels = read_bundle_files(directory)
    # the preprocessing the bundle records (not the backbone's current timm defaults): the exported contract
    transform = build_transforms(config.image_size, config.mean, config.std, train=False)
    path = directory / BACKENDS[backend]
    model = _load_eager(path, config, labels) if backend == "safetensors" else _load_torchscript(path)
    return Bundle(directory, backend, config, labels.lesion, labels.site, model, transform)


def _load_eager(path: Path, config: BundleConfig, labels: BundleLabels) -> torch.nn.Module:
    model = build_parts(config.train_config_of_network(), config.dataset_info(labels)).model
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


@dataclass
class MetadataSource:
    """Where ``skintune predict`` takes the metadata from: a CSV (``image, site, age, sex``) or one value per flag
    for every image (raw text, as a CSV cell would hold it). Nothing given: every field is missing."""

    csv: Path | None = None
    site: str | None = None
    age: str | None = None
    sex: str | None = None

    def flags(self) -> dict[str, str]:
        """The fields given as flags: ``{field: raw value}``."""
        return {f: v for f in RAW_FIELDS if (v := getattr(self, f)) is not None}

    def given(self) -> list[str]:
        """What was given, as the user typed it (``--metadata FILE``, ``--age``...), for messages."""
        return ([f"--metadata {self.csv}"] if self.csv is not None else []) + [f"--{f}" for f in self.flags()]


def read_metadata(bundle: Bundle, paths: Sequence[str | Path], source: MetadataSource | None = None) -> np.ndarray:
    """The raw metadata codes of ``paths`` for ``bundle``'s network, ``(n, 3)`` float32 in
    :data:`~trainables.metadata.RAW_FIELDS` order (-1 / NaN / -1 where missing, as in the shards). Fields the
    network does not take stay missing. Bad values raise a one-line :class:`UserError`."""
    source = source or MetadataSource()
    if source.csv is not None and source.flags():
        flags = ", ".join(f"--{f}" for f in source.flags())
        raise UserError(
            f"--metadata {source.csv} and {flags} both given; put every value in the CSV, or use the flags alone"
        )
    files = [Path(p) for p in paths]
    raw = np.array([[MISSING_CODE[f] for f in RAW_FIELDS]] * len(files), dtype=np.float32).reshape(-1, 3)
    fields, sites = bundle.metadata_inputs, bundle.config.metadata_sites
    codes: dict[str, np.ndarray | float]
    if source.csv is not None:
        codes = dict(_csv_codes(Path(source.csv).expanduser(), files, fields, sites))
    else:
        codes = {f: _flag_code(f, v, sites) for f, v in source.flags().items() if f in fields}
        unused = [f"--{f}" for f in source.flags() if f not in fields]
        if unused:
            print(f"predict: {', '.join(unused)} ignored: the model does not take it", file=sys.stderr)
    for name, values in codes.items():
        raw[:, RAW_FIELDS.index(name)] = values
    return raw


def _parse_column(frame: pd.DataFrame, name: str, path: Path, sites: Sequence[str], id_column: str | None):
    """One metadata column of ``frame`` as raw codes, read by the adapters' parsers (same vocabulary)."""
    if name == "age":
        return parse_age(frame, name, path, id_column=id_column)
    if name == "sex":
        return parse_sex(frame, name, path, id_column=id_column)
    try:
        return encode(frame, name, vocabulary(sites), path, missing=MISSING_VALUES, ignore_case=True)
    except UserError as exc:  # the adapters' advice names the dataset's vocabulary; here it is the model's
        raise UserError(str(exc).replace("fix the row or the vocabulary", "the model knows these sites only")) from None


def _csv_codes(path: Path, paths: list[Path], fields: Sequence[str], sites: Sequence[str]) -> dict[str, np.ndarray]:
    hint = "predict --metadata needs an 'image' column (the image file names) and any of 'site', 'age', 'sex'"
    frame = load_csv(path, required=["image"], hint=hint)
    check_ids(frame, "image", path)
    rows: dict[str, int] = {}
    for pos, value in enumerate(frame["image"]):
        name = Path(value.replace("\\", "/")).name
        if name in rows:
            raise UserError(
                f"{where(path, line(pos), 'image')}: file name {name!r} is also on line {line(rows[name])}; "
                "predict matches images by file name, so list each name once"
            )
        rows[name] = pos
    unused = [c for c in RAW_FIELDS if c in frame.columns and c not in fields]
    if unused:
        print(f"predict: {path}: column(s) {', '.join(unused)} ignored: the model does not take them", file=sys.stderr)
    parsed = {name: _parse_column(frame, name, path, sites, "image") for name in fields if name in frame.columns}
    positions = []
    for image in paths:
        pos = rows.get(image.name, rows.get(image.stem, -1))
        if pos < 0:
            unmatched = [p for p in paths if p.name not in rows and p.stem not in rows]
            more = f" ({len(unmatched)} images have no row)" if len(unmatched) > 1 else ""
            raise UserError(
                f"{where(path, column='image')}: no row for image {image.name!r} ({image}){more}; add a line "
                f"'{image.name},SITE,AGE,SEX' (leave a cell empty where it is unknown)"
            )
        positions.append(pos)
    return {name: np.asarray(values, dtype=np.float32)[positions] for name, values in parsed.items()}


def _flag_code(name: str, value: str, sites: Sequence[str]) -> float:
    """The raw code of ``--<name> value`` (one for every image), read as a CSV cell with that value would be."""
    flag = f"--{name}"
    frame = pd.DataFrame({name: [value.strip()]})
    try:
        codes = _parse_column(frame, name, Path(flag), sites, None)
    except UserError as exc:
        text = str(exc).removeprefix(where(flag, line(0), name))
        text = text.replace("leave the cell empty", f"leave out {flag}").replace("; fix the row", "")
        raise UserError(f"{flag} {value!r}{text}") from None
    return float(codes[0])


def describe_inputs(bundle: Bundle, raw: np.ndarray) -> list[dict | None]:
    """Per image, the metadata the network is given, readable (``{"site": "head/neck", "age": 55.0, "sex":
    None}``; ``None`` = missing); ``None`` per image for an image-only bundle."""
    if not bundle.metadata_inputs:
        return [None] * len(raw)
    sites = bundle.config.metadata_sites
    out: list[dict | None] = []
    for site, age, sex in raw.tolist():
        values = {
            "site": sites[int(site)] if site >= 0 else None,
            "age": None if np.isnan(age) else float(age),
            "sex": SEX_CLASSES[int(sex)] if sex >= 0 else None,
        }
        out.append({f: values[f] for f in bundle.metadata_inputs})
    return out


def missing_report(bundle: Bundle, paths: Sequence[str | Path], raw: np.ndarray, given: bool = True) -> list[str]:
    """Lines saying which metadata fields are missing for which images (empty when none is missing)."""
    fields = bundle.metadata_inputs
    if not fields:
        return []
    path_of = "the model then takes its missing-value path for them (the field blanked, as metadata_dropout does "
    path_of += "in training)"
    if not given:
        return [
            f"predict: this model takes {', '.join(fields)} besides the image, and none was given (--metadata "
            f"FILE.csv or --{' / --'.join(fields)}): every field is missing for all {len(raw)} image(s); {path_of}"
        ]
    parts = []
    for name in fields:
        column = raw[:, RAW_FIELDS.index(name)]
        missing = np.isnan(column) if name == "age" else column < 0
        if missing.all():
            parts.append(f"{name}: all {len(raw)} image(s)")
        elif missing.any():
            names = [Path(p).name for p, m in zip(paths, missing, strict=True) if m]
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"{name}: {len(names)} image(s) ({shown})")
    return [f"predict: metadata missing for {'; '.join(parts)}; {path_of}"] if parts else []


@torch.no_grad()
def predict_images(
    bundle: Bundle, paths: Sequence[str | Path], batch_size: int = 16, meta: np.ndarray | None = None, tta: int = 1
) -> list[dict]:
    """Per image: ``path``, ``lesion``/``lesion_prob`` (top class), ``site``/``site_prob`` (``None`` without a
    site head), and ``lesion_probs``/``site_probs`` (class → probability); for a bundle with metadata inputs also
    ``metadata`` (what the network was given, :func:`describe_inputs`). ``meta``: the raw codes of
    :func:`read_metadata` (``None``: every field missing); an image-only bundle ignores it. The lesion logits are
    divided by the bundle's ``temperature`` before the softmax; ``tta`` > 1 averages the probabilities over that
    many flips / 90-degree rotations (:func:`trainables.tta.predict_tta`)."""
    if not paths:
        raise UserError("no images given; pass one or more image files")
    check_tta(tta)
    temperature = bundle.config.temperature
    if bundle.metadata_inputs and meta is None:
        meta = read_metadata(bundle, paths)
    if meta is not None and len(meta) != len(paths):
        raise ValueError(f"{len(meta)} metadata rows for {len(paths)} images")
    inputs = describe_inputs(bundle, meta) if meta is not None else [None] * len(paths)
    rows = []
    for start in range(0, len(paths), batch_size):
        chunk = [Path(p) for p in paths[start : start + batch_size]]
        batch = torch.stack([bundle.preprocess(p) for p in chunk])
        codes = None
        if bundle.metadata_inputs:
            assert meta is not None
            codes = torch.from_numpy(np.ascontiguousarray(meta[start : start + batch_size], dtype=np.float32))
        if tta > 1:
            lesion_p, site_p = predict_tta(bundle.model, batch, tta, codes, temperature)
            site_p = site_p if bundle.site_classes else None
        else:
            lesion_logits, site_logits = bundle.model(batch) if codes is None else bundle.model(batch, codes)
            lesion_p = torch.softmax(lesion_logits.double() / temperature, dim=1)
            has_site = site_logits is not None and site_logits.shape[1] > 0 and bundle.site_classes
            site_p = torch.softmax(site_logits.double(), dim=1) if has_site else None
        for i, path in enumerate(chunk):
            row = _row(
                path, lesion_p[i], bundle.lesion_classes, None if site_p is None else site_p[i], bundle.site_classes
            )
            if inputs[start + i] is not None:
                row["metadata"] = inputs[start + i]
            rows.append(row)
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
    columns += [f"input:{f}" for f in bundle.metadata_inputs]
    with output.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            flat = {k: row[k] for k in columns[:5]}
            flat.update({f"lesion:{k}": v for k, v in row["lesion_probs"].items()})
            flat.update({f"site:{k}": v for k, v in row["site_probs"].items()})
            flat.update({f"input:{k}": "" if v is None else v for k, v in (row.get("metadata") or {}).items()})
            writer.writerow(flat)
    return output


def isic_submission(rows: list[dict], bundle: Bundle) -> pd.DataFrame:
    """The rows in the ISIC challenge submission layout (:func:`tuner.submission.submission_frame`): ``image`` (the
    file name without its suffix, the ISIC image id), then the lesion probabilities in the ISIC 2019 order."""
    images = [Path(r["path"]).stem for r in rows]
    seen: dict[str, str] = {}
    for image, row in zip(images, rows, strict=True):
        if image in seen and seen[image] != row["path"]:
            raise UserError(
                f"{seen[image]} and {row['path']} are both image {image!r} in an ISIC submission (it names images "
                "by file name without suffix); rename one or predict them separately"
            )
        seen[image] = row["path"]
    probs = np.array([[r["lesion_probs"][c] for c in bundle.lesion_classes] for r in rows], dtype=np.float64)
    return submission_frame(images, probs, bundle.lesion_classes)


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
    metadata: MetadataSource | None = None,
    fmt: str = "default",
    tta: int = 1,
) -> list[dict]:
    """What ``skintune predict`` does: load, read the metadata, predict, then print the table or write ``output``
    (``fmt="isic"``: the ISIC submission CSV, printed or written to ``output``, a ``.csv``). Notes on metadata
    (missing fields, metadata given to an image-only model) go to stderr."""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "isic" and output and Path(output).suffix.lower() != ".csv":
        raise UserError(f"{output}: --format isic writes a CSV; name the --output file .csv")
    check_tta(tta)
    bundle = load_bundle(model_dir, backend)
    metadata = metadata or MetadataSource()
    if not images:
        raise UserError("no images given; pass one or more image files")
    meta = None
    if bundle.metadata_inputs:
        meta = read_metadata(bundle, images, metadata)
        for note in missing_report(bundle, images, meta, given=bool(metadata.given())):
            print(note, file=sys.stderr)
    elif metadata.given():
        print(
            f"predict: warning: {' '.join(metadata.given())} ignored: this model takes the image only "
            "(exported without metadata_inputs)",
            file=sys.stderr,
        )
    rows = predict_images(bundle, images, batch_size, meta=meta, tta=tta)
    if fmt == "isic":
        frame = isic_submission(rows, bundle)
        if output:
            written = write_submission(Path(output).expanduser(), frame)
            print(f"predict: wrote {len(rows)} prediction(s) in the ISIC submission layout to {written}")
        else:
            print(frame.to_csv(index=False), end="")
        return rows
    if output:
        print(f"predict: wrote {len(rows)} prediction(s) to {write_predictions(rows, bundle, output)}")
    else:
        print(format_predictions(rows))
    return rows
