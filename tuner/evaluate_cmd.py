"""``skintune evaluate``: run an exported model over any dataset that ``prepare`` reads (external validation).

CLI::

    skintune evaluate --model EXPORT_DIR --format FMT --root DIR [--option K=V] [--split all|train|val|test]
                      [--tta N] --out DIR

Steps:

1. The dataset's label vocabulary is mapped onto the model's (:func:`trainables.data.vocab.map_classes`: the same
   name, else the same ISIC 2019 name); classes that do not map are listed with the reason and their images left
   out. Body sites are mapped the same way for the site head's metrics and for a model with metadata inputs (an
   unmapped site is a missing site there).
2. The dataset is prepared (:func:`trainables.data.prepare.prepare`) into a cache,
   ``$SKINTUNE_CACHE/evaluate/<key>`` (``~/.cache/skintune`` by default), at the model's prepared image size and
   JPEG quality, so each image is exactly what ``skintune predict`` would feed the model; a rerun reuses it.
   ``--split all`` (default) takes every image; ``train``/``val``/``test`` take that part of ``prepare``'s
   default split (seed 0, 15 % validation, 15 % test, grouped by lesion/patient), the split a model trained on
   this dataset with the default options did not see (``test``).
3. The model predicts each image (lesion logits divided by the bundle's ``temperature``, then softmax), with
   ``--tta N`` averaged over N flips/rotations (:mod:`trainables.tta`); a model with metadata inputs gets each
   image's recorded site, age and sex.
4. ``--out`` receives ``predictions.csv`` (the ISIC challenge submission layout, :mod:`tuner.submission`),
   ``metrics.json``, ``confusion_matrix.png`` and ``evaluate.md``.

Metrics (``metrics.json`` ``metrics``): balanced accuracy (the ISIC challenge's: the mean recall of each row's
argmax over the classes present in the truth, computed on the very probabilities written to predictions.csv),
macro one-vs-rest AUC over the classes present, accuracy and per-class recall (``recall/<column>``, named as the
submission columns), each ``{estimate, low, high}`` with a 95 % percentile bootstrap CI that resamples lesion
groups (every image of a drawn lesion, or patient where the release groups by patient, comes along:
:func:`tuner.stats.bootstrap_ci`). ``site``: the site head's accuracy and balanced accuracy on images whose site
maps, with CIs, when the model has a site head and any site maps.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables import storage
from trainables.data.adapters import check_format, read_dataset
from trainables.data.schema import MISSING_SITE
from trainables.data.vocab import ClassMapping, isic_lesion, map_classes
from trainables.errors import UserError
from trainables.tta import MAX_VIEWS, VIEW_NAMES, check_tta
from tuner import stats
from tuner.submission import column_names, submission_frame, write_submission

SPLIT_CHOICES = ("all", "train", "val", "test")
PREDICTIONS, METRICS, CONFUSION, REPORT = "predictions.csv", "metrics.json", "confusion_matrix.png", "evaluate.md"
OUTPUTS = (PREDICTIONS, METRICS, CONFUSION, REPORT)
LEVEL = 0.95


@dataclass
class Predicted:
    """Per-image outputs over the evaluated split(s), in dataset order; ``lesion`` and ``site`` are the dataset's
    own class indexes (-1 = missing site)."""

    image_ids: list[str]
    group_ids: list[str]
    lesion: np.ndarray
    site: np.ndarray
    lesion_probs: np.ndarray  # (n, model lesion classes), in the model's class order
    site_probs: np.ndarray | None  # (n, model site classes) or None without a site head


def run_evaluate(
    model_dir: str | Path,
    fmt: str,
    root: str | Path,
    out: str | Path,
    options: Mapping | None = None,
    split: str = "all",
    tta: int = 1,
    backend: str = "safetensors",
    batch_size: int = 32,
    n_boot: int = 1000,
    workers: int | None = None,
    skip_bad: bool = False,
    cache: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """What ``skintune evaluate`` does; returns the contents of ``metrics.json``."""
    options = dict(options or {})
    check_format(fmt, options)
    if split not in SPLIT_CHOICES:
        raise UserError(f"--split {split!r}: use one of {', '.join(SPLIT_CHOICES)}")
    _check_tta_flag(tta)
    _check_positive("--batch-size", batch_size, 32)
    _check_positive("--n-boot", n_boot, 1000)
    _check_root(root, fmt)
    from tuner.predict import load_bundle  # torch: imported only once the flags are known to be good

    bundle = load_bundle(model_dir, backend)  # an incomplete export: one line naming the missing files
    table = read_dataset(fmt, root, options)
    lesion_map = _lesion_mapping(table.lesion_classes, bundle.lesion_classes, fmt, root)
    site_map = map_classes(table.site_classes, bundle.site_classes, fmt, kind="site") if bundle.site_classes else None
    meta_sites = list(getattr(bundle.config, "metadata_sites", []) or [])
    meta_site_map = map_classes(table.site_classes, meta_sites, fmt, kind="site") if meta_sites else None

    prepared = _prepare(fmt, root, options, split, bundle.config, workers, skip_bad, cache, progress)
    info = json.loads((prepared / "dataset.json").read_text())
    temperature = float(getattr(bundle.config, "temperature", 1.0) or 1.0)
    pred = _predict(bundle, prepared, split, tta, temperature, meta_site_map, batch_size, progress)

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    result = _evaluate(pred, bundle, lesion_map, site_map, table.lesion_classes, table.site_classes, n_boot, out)
    result.update(
        model=str(Path(model_dir).expanduser()),
        backend=backend,
        temperature=temperature,
        tta={"views": tta, "on": tta > 1, "transforms": list(VIEW_NAMES[:tta])},
        inputs=_inputs(bundle, meta_site_map),
        dataset={
            "format": fmt,
            "root": str(Path(root).expanduser().absolute()),
            "options": options,
            "split": split,
            "split_rule": "every image" if split == "all" else "prepare's default split (seed 0, 15 % val, 15 % test)",
            "prepared": str(prepared),
            "fingerprint": info.get("fingerprint"),
            "images": len(pred.image_ids),
            "bad_images": len(info.get("bad_images") or []),
        },
    )
    storage.write_text(str(out / METRICS), json.dumps(result, indent=2, default=_json_default) + "\n")
    storage.write_text(str(out / REPORT), render_report(result))
    if progress:
        _print_summary(result, out)
    return result


def _check_tta_flag(tta) -> None:
    """``--tta`` is a number of views, 1 to 8; the refusal names the flag (contains ``tta=N`` like
    :func:`trainables.tta.check_tta`'s)."""
    try:
        check_tta(tta)
    except UserError:
        raise UserError(
            f"--tta={tta!r}: the number of test-time views must be a whole number from 1 (no TTA) to {MAX_VIEWS} "
            f"(flips and 90-degree rotations); pass --tta 1 to --tta {MAX_VIEWS}"
        ) from None


def _check_positive(flag: str, value, default: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{flag} {value!r}: must be a whole number >= 1; leave {flag} out for {default}")


def _check_root(root: str | Path, fmt: str) -> None:
    folder = Path(root).expanduser().absolute()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "no such folder"
        raise UserError(f"--root {folder}: {what}; point --root at the unpacked {fmt} release (its top folder)")


def _inputs(bundle, meta_site_map: ClassMapping | None) -> dict:
    """What the network was given besides the image: its metadata inputs and, for the site, which dataset sites
    became which model sites (the others, and images without a site, are given as missing)."""
    fields = list(getattr(bundle, "metadata_inputs", ()))
    out: dict = {"metadata": fields}
    if "site" in fields:
        out["site_mapping"] = dict(meta_site_map.via) if meta_site_map else {}
        out["sites_given_as_missing"] = sorted(meta_site_map.left_out) if meta_site_map else []
    return out


def _lesion_mapping(dataset: list[str], model: list[str], fmt: str, root: str | Path) -> ClassMapping:
    mapping = map_classes(dataset, model, fmt)
    if mapping.index:
        return mapping
    if not any(isic_lesion(name) for name in model) and not set(dataset) & set(model):
        raise UserError(
            f"the model's classes ({', '.join(model)}) have no ISIC 2019 names, so format {fmt!r} "
            f"({', '.join(dataset)}) cannot be mapped onto them; evaluate it on data with the model's own class names"
        )
    reasons = "; ".join(f"{name}: {why}" for name, why in mapping.left_out.items())
    raise UserError(
        f"{root}: no {fmt} class maps to a class of the model ({', '.join(model)}): {reasons}; "
        "evaluate needs a dataset that shares classes with the model"
    )


def _prepare(fmt, root, options, split, config, workers, skip_bad, cache, progress) -> Path:
    from trainables.data.prepare import PrepareOptions, prepare

    everything = split == "all"  # no val/test: every image lands in "train"
    opts = PrepareOptions(
        format=fmt,
        root=str(root),
        options=dict(options),
        image_size=int(config.resize_size or config.image_size),
        quality=int(config.jpeg_quality),
        val_fraction=0.0 if everything else PrepareOptions.val_fraction,
        test_fraction=0.0 if everything else PrepareOptions.test_fraction,
    )
    key = hashlib.sha256(json.dumps(opts.content_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = Path(cache).expanduser() / key if cache else storage.CACHE / "evaluate" / key
    prepare(opts, folder, workers=workers, skip_bad=skip_bad, progress=progress)
    return folder


def _predict(bundle, prepared: Path, split, tta, temperature, meta_site_map, batch_size, progress) -> Predicted:
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from trainables.data.loader import ShardDataset
    from trainables.metadata import raw_metadata
    from trainables.tta import predict_tta

    splits = ("train",) if split == "all" else (split,)  # "all" is prepared without val/test
    datasets = [ShardDataset(prepared, s, bundle.transform) for s in splits]
    ids, groups, lesion, site, lesion_p, site_p = [], [], [], [], [], []
    total = sum(len(d) for d in datasets)
    with tqdm(total=total, unit="img", desc="evaluate", disable=not progress) as bar:
        for dataset in datasets:
            meta = None
            if getattr(bundle, "metadata_inputs", ()):  # a bundle with metadata inputs (site, age, sex)
                sites = np.full(len(dataset), MISSING_SITE, np.int64)
                if meta_site_map is not None:
                    lookup = np.array([*meta_site_map.lookup(len(dataset.info["site_classes"])), MISSING_SITE])
                    sites = lookup[dataset.site]  # -1 (missing) indexes the trailing MISSING_SITE
                meta = torch.from_numpy(raw_metadata(sites, dataset.age, dataset.sex))
            start = 0
            for images, _, _ in DataLoader(dataset, batch_size=batch_size):
                codes = None if meta is None else meta[start : start + len(images)]
                lp, sp = predict_tta(bundle.model, images, tta, codes, temperature)
                lesion_p.append(lp.double().numpy())
                if sp is not None and bundle.site_classes:
                    site_p.append(sp.double().numpy())
                start += len(images)
                bar.update(len(images))
            ids += dataset.image_ids
            groups += [str(g) for g in dataset.group_ids]
            lesion.append(dataset.lesion)
            site.append(dataset.site)
    return Predicted(
        image_ids=[str(i) for i in ids],
        group_ids=groups,
        lesion=np.concatenate(lesion),
        site=np.concatenate(site),
        lesion_probs=np.concatenate(lesion_p),
        site_probs=np.concatenate(site_p) if site_p else None,
    )


def _recall_of(c: int) -> Callable:
    """A :mod:`tuner.stats` metric function: recall of class ``c`` (NaN in a resample without that class)."""

    def recall(y, pred, weights=None):
        y, pred = np.asarray(y), np.asarray(pred)
        labels = pred.argmax(axis=1) if pred.ndim == 2 else pred
        w = np.ones((1, len(y))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
        mask = y == c
        total = w[:, mask].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = w[:, mask] @ (labels[mask] == c).astype(float) / total
        return float(values[0]) if weights is None else values

    return recall


def _evaluate(pred: Predicted, bundle, lesion_map, site_map, dataset_lesion, dataset_site, n_boot, out) -> dict:
    lookup = np.array(lesion_map.lookup(len(dataset_lesion)))
    y_model = lookup[pred.lesion]
    keep = y_model >= 0
    left_out = {
        name: {"reason": why, "images": int(np.sum(pred.lesion == dataset_lesion.index(name)))}
        for name, why in lesion_map.left_out.items()
    }
    if not keep.any():
        reasons = "; ".join(f"{name}: {row['reason']}" for name, row in left_out.items())
        raise UserError(
            f"none of the {len(pred.lesion)} images in the evaluated split has a class that maps to the model's "
            f"({reasons}); try --split all"
        )
    images = [i for i, k in zip(pred.image_ids, keep, strict=True) if k]
    groups = np.asarray(pred.group_ids)[keep]
    frame = submission_frame(images, pred.lesion_probs[keep], bundle.lesion_classes)
    write_submission(out / PREDICTIONS, frame)
    # every metric on the submission's own columns and values, so that it is the challenge's score of that file
    columns = list(frame.columns[1:])
    probs = frame[columns].to_numpy(dtype=np.float64)
    names = column_names(bundle.lesion_classes)
    y = np.array([columns.index(names[j]) for j in y_model[keep]])
    ci = _ci_fn(n_boot, groups)
    metrics = {
        "lesion_bacc": ci(y, probs, stats.balanced_accuracy),
        "lesion_auc": ci(y, probs, stats.macro_auc),
        "lesion_acc": ci(y, probs, stats.accuracy),
    }
    present = np.unique(y)
    for c in present:
        metrics[f"recall/{columns[c]}"] = ci(y, probs, _recall_of(int(c)))
    predicted = probs.argmax(axis=1)
    cm = np.array([[int(np.sum((y == r) & (predicted == c))) for c in range(len(columns))] for r in present])
    _plot_confusion(cm, [columns[r] for r in present], columns, out / CONFUSION)
    counts = {columns[c]: int(np.sum(y == c)) for c in present}
    mapping = {
        name: {"model_class": model, "column": names[bundle.lesion_classes.index(model)],
               "images": int(np.sum(pred.lesion == dataset_lesion.index(name)))}
        for name, model in lesion_map.via.items()
    }  # fmt: skip
    return {
        "predictions": PREDICTIONS,
        "columns": columns,
        "images_evaluated": int(keep.sum()),
        "lesion_mapping": mapping,
        "left_out": left_out,
        "counts": counts,
        "metrics": metrics,
        "site": _site_metrics(pred, keep, site_map, dataset_site, bundle.site_classes, n_boot),
        "bootstrap": {
            "level": LEVEL,
            "n_boot": n_boot,
            "unit": "lesion group",
            "n_units": len(np.unique(groups)),
            "seed": 0,
        },
        "confusion_matrix": {
            "rows": [columns[r] for r in present],
            "columns": columns,
            "counts": cm.tolist(),
            "png": CONFUSION,
        },
    }


def _ci_fn(n_boot: int, groups: np.ndarray) -> Callable:
    def ci(y, probs, metric_fn) -> dict:
        with warnings.catch_warnings():  # a resample without some class: that class is left out of its mean
            warnings.simplefilter("ignore", RuntimeWarning)
            return stats.bootstrap_ci(y, probs, metric_fn, n_boot=n_boot, seed=0, level=LEVEL, groups=groups)

    return ci


def _site_metrics(pred: Predicted, keep, site_map, dataset_site, model_site, n_boot) -> dict | None:
    """The site head on the kept images whose site maps to a model site; None without a head or a mapped site."""
    if site_map is None or pred.site_probs is None:
        return None
    lookup = np.array([*site_map.lookup(len(dataset_site)), MISSING_SITE])
    s = lookup[pred.site]  # a missing dataset site (-1) indexes the trailing MISSING_SITE
    known = keep & (s >= 0)
    left_out = {
        name: {"reason": why, "images": int(np.sum(pred.site[keep] == dataset_site.index(name)))}
        for name, why in site_map.left_out.items()
    }
    base = {"mapping": dict(site_map.via), "left_out": left_out, "missing": int(np.sum(pred.site[keep] < 0))}
    if not known.any():
        return {**base, "images": 0, "metrics": None}
    ci = _ci_fn(n_boot, np.asarray(pred.group_ids)[known])
    sp = pred.site_probs[known]
    return {
        **base,
        "images": int(known.sum()),
        "metrics": {
            "site_acc": ci(s[known], sp, stats.accuracy),
            "site_bacc": ci(s[known], sp, stats.balanced_accuracy),
        },
        "counts": {model_site[c]: int(np.sum(s[known] == c)) for c in np.unique(s[known])},
    }


def _plot_confusion(cm: np.ndarray, rows: list[str], columns: list[str], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(0.6 * len(columns) + 2.4, 0.5 * len(rows) + 2.0))
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros_like(cm, dtype=float), where=totals > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(columns)):
            color = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("predicted (argmax of predictions.csv)")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (colour: share of the row)", fontsize=10)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes(str(path), image.getvalue())


def _fmt_ci(value: dict | None) -> str:
    if not value:
        return "-"
    return f"{value['estimate']:.3f} ({value['low']:.3f} to {value['high']:.3f})"


def _inputs_text(inputs: dict) -> str:
    if not inputs["metadata"]:
        return " only"
    text = f" and the recorded {', '.join(inputs['metadata'])}"
    if inputs.get("sites_given_as_missing"):
        text += f" (sites without a model equivalent given as missing: {', '.join(inputs['sites_given_as_missing'])})"
    return text


def render_report(result: dict) -> str:
    """``evaluate.md``: what was evaluated, how, the class mapping, the metrics with CIs and the confusion matrix."""
    d, tta, boot = result["dataset"], result["tta"], result["bootstrap"]
    tta_text = f"on, {tta['views']} views ({', '.join(tta['transforms'])})" if tta["on"] else "off (1 view)"
    lines = [
        "# External evaluation",
        "",
        f"- Model: `{result['model']}` ({result['backend']}), temperature {result['temperature']:g}",
        f"- Dataset: {d['format']} at `{d['root']}`"
        + (f" (options {d['options']})" if d["options"] else "")
        + f"; split {d['split']} ({d['split_rule']}): {d['images']} images, {result['images_evaluated']} evaluated",
        f"- Test-time augmentation: {tta_text}",
        f"- Inputs: the image{_inputs_text(result['inputs'])}",
        f"- Intervals: {boot['level']:.0%} percentile bootstrap, {boot['n_boot']} resamples of "
        f"{boot['n_units']} {boot['unit']}s",
        f"- Predictions: `{result['predictions']}` (ISIC submission layout: "
        f"{', '.join(['image', *result['columns']])})",
        "",
        "## Class mapping",
        "",
        "| dataset class | model class | column | images |",
        "|---|---|---|---|",
    ]
    for name, row in result["lesion_mapping"].items():
        lines.append(f"| {name} | {row['model_class']} | {row['column']} | {row['images']} |")
    if result["left_out"]:
        lines += ["", "Left out (not mapped, never merged):", ""]
        lines += [f"- {name}: {row['reason']} ({row['images']} images)" for name, row in result["left_out"].items()]
    m = result["metrics"]
    lines += [
        "",
        "## Lesion metrics",
        "",
        "| metric | estimate (95 % CI) |",
        "|---|---|",
        f"| balanced accuracy (ISIC challenge) | {_fmt_ci(m['lesion_bacc'])} |",
        f"| macro AUC (one-vs-rest) | {_fmt_ci(m['lesion_auc'])} |",
        f"| accuracy | {_fmt_ci(m['lesion_acc'])} |",
        "",
        "| class | images | recall (95 % CI) |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | {n} | {_fmt_ci(m[f'recall/{c}'])} |" for c, n in result["counts"].items()]
    site = result["site"]
    if site is None:
        lines += ["", "## Site", "", "The model has no site head, or the dataset records no site: no site metrics."]
    else:
        lines += ["", "## Site head", ""]
        if site["metrics"]:
            lines += [
                f"On the {site['images']} images whose site maps to a model site "
                f"({site['missing']} have no site recorded):",
                "",
                f"- site accuracy {_fmt_ci(site['metrics']['site_acc'])}",
                f"- site balanced accuracy {_fmt_ci(site['metrics']['site_bacc'])}",
            ]
        else:
            lines.append("No image has a site that maps to the model's sites.")
        if site["left_out"]:
            left = ", ".join(f"{k} ({v['reason']}, {v['images']} images)" for k, v in site["left_out"].items())
            lines += ["", f"Sites left out: {left}."]
    lines += ["", "## Confusion matrix", "", f"![confusion matrix]({CONFUSION})", ""]
    return "\n".join(lines)


def _print_summary(result: dict, out: Path) -> None:
    m = result["metrics"]
    tta = result["tta"]
    print(
        f"evaluate: {result['images_evaluated']} images; balanced accuracy {_fmt_ci(m['lesion_bacc'])}, "
        f"macro AUC {_fmt_ci(m['lesion_auc'])}, accuracy {_fmt_ci(m['lesion_acc'])} "
        f"(TTA {'x' + str(tta['views']) if tta['on'] else 'off'})"
    )
    if result["left_out"]:
        left = ", ".join(f"{k} ({v['images']} images: {v['reason']})" for k, v in result["left_out"].items())
        print(f"evaluate: left out, not mapped: {left}")
    print(f"evaluate: wrote {', '.join(OUTPUTS)} to {out}")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
