"""``MODEL_CARD.md`` of an export bundle: intended use, model, data, metrics, limitations, pretrained weights.

Written by ``skintune export --experiment NAME`` (see :mod:`tuner.export`); :func:`render_model_card` is pure
(the bundle's typed config and labels, metrics.json, dataset.json and the experiment config in, Markdown out), so
the card can be re-rendered from a bundle's JSON files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainables.pretrained import HUB, RANDOM_INIT

if TYPE_CHECKING:
    from tuner.bundle import BundleConfig, BundleLabels
    from tuner.config import DataSection, ExperimentConfig

DERMOSCOPY_FORMATS = {"isic2019", "isic2020", "ham10000", "derm7pt", "synthetic"}
SPLITS = ("train", "val", "test")
HEADLINE = ("lesion_bacc", "lesion_auc", "lesion_acc", "site_acc", "site_bacc")


def render_model_card(
    config: BundleConfig,
    labels: BundleLabels,
    metrics: dict,
    info: dict | None,
    experiment: ExperimentConfig | None,
) -> str:
    """The card as Markdown; ``info`` is the dataset.json and ``experiment`` the experiment's config (each
    ``None`` when it was not found)."""
    data = experiment.data if experiment else None
    parts = [
        f"# Model card: {config.experiment or 'skintune'}\n",
        f"{'Multi-task' if config.multitask else 'Single-task'} skin-lesion classifier exported by `skintune export` "
        f"(arm `{metrics.get('arm', 'mtl')}`, retrain seed {config.seed}). Backbone `{config.backbone}`, "
        f"{config.image_size} px input, "
        f"{len(labels.lesion)} lesion classes"
        + (f" and {len(labels.site)} body sites." if labels.site else " (no body-site head)."),
        _intended_use(labels),
        _model(config),
        _data(info, data),
        _metrics(metrics, labels),
        _calibration(metrics.get("calibration")),
        _limitations(labels, info, data, metrics.get("calibration")),
        _weights(config),
    ]
    return "\n".join(parts).rstrip() + "\n"


def _intended_use(labels: BundleLabels) -> str:
    site = " and the body site" if labels.site else ""
    return f"""
## Intended use
- **Research and clinical decision support only.** For one skin-lesion image the model suggests
  probabilities over {", ".join(f"`{c}`" for c in labels.lesion)}{site}, to be read by a trained
  clinician together with the history, the whole patient and, where indicated, histopathology.
- **Not a diagnostic device.** It has no regulatory clearance (FDA, CE/MDR or other); it must not be used to
  diagnose, to rule out melanoma or other skin cancer, or to triage patients without clinical review.
- Not for direct use by the public or for images unlike the training data (see Limitations): it always answers
  with one of its classes, also for images that show no lesion at all."""


def _model(config: BundleConfig) -> str:
    heads = "lesion head + site head" if config.multitask else "lesion head"
    return f"""
## Model
| | |
|---|---|
| Architecture | timm `{config.backbone}` → dropout {config.dropout} → {heads} |
| Input | RGB, shorter side {config.resize_size} px then center crop {config.image_size} px |
| Normalisation | mean {_fmt_list(config.mean)}, std {_fmt_list(config.std)} |
| Inputs | {_inputs(config)} |
| Temperature | {config.temperature:.3f} (lesion logits / T before the softmax; see Calibration) |
| Files | `model.safetensors` (weights), `model.torchscript.pt` (traced, CPU), `config.json`, `labels.json` |
| Dataset fingerprint | `{config.dataset_fingerprint}` |

Run it with `skintune predict --model DIR IMAGE...`; preprocessing there is the validation preprocessing."""


def _inputs(config: BundleConfig) -> str:
    if not config.metadata_inputs:
        return "the image only"
    return (
        f"the image and patient metadata ({', '.join(config.metadata_inputs)}), fused before the lesion head; "
        "missing fields allowed (`skintune predict --metadata FILE.csv` or `--site/--age/--sex`)"
    )


def _calibration(cal: dict | None) -> str:
    if not cal:
        return ""
    lines = ["\n## Calibration"]
    if not cal.get("fitted"):
        lines.append(f"- Not calibrated (temperature 1): {cal.get('reason')}.")
        return "\n".join(lines)
    lines.append(
        f"Temperature scaling of the lesion head: T = {cal['temperature']:.3f}, fitted on the validation split "
        f"({cal['val']['images']} images) by minimising the negative log-likelihood; it changes the confidence, "
        f"not the predicted class. ECE: expected calibration error of the top class, {cal['ece_bins']} bins.\n"
    )
    lines += [_tr("split", "NLL before", "NLL after", "ECE before", "ECE after"), _tr(*["---"] * 5)]
    for split in ("val", "test"):
        row = cal.get(split)
        if row:
            name = "validation (fit)" if split == "val" else "test (held out)"
            cells = (row["nll_before"], row["nll_after"], row["ece_before"], row["ece_after"])
            lines.append(_tr(name, *(_f(v) for v in cells)))
    return "\n".join(lines)


def _data(info: dict | None, data: DataSection | None) -> str:
    fmt = data.format if data else "unknown"
    lines = [
        "\n## Data",
        f"- Format: `{fmt}`" + (" (synthetic images from `skintune synth`)" if _synthetic(data) else ""),
    ]
    if info is None:
        lines.append("- dataset.json was not found at export time: no counts available.")
        return "\n".join(lines)
    counts = info.get("counts", {})
    lines.append(f"- Fingerprint: `{info.get('fingerprint')}`; {info.get('images')} images")
    lines.append(f"- Images with a missing body site: {100 * float(info.get('site_missing_rate', 0.0)):.1f} %")
    lines.append("- Splits are stratified by diagnosis and grouped by lesion/patient (no group in two splits).\n")
    for what in ("lesion", "site"):
        names = info.get(f"{what}_classes") or []
        if names:
            lines += [_tr(f"{what} (images)", *SPLITS), _tr(*["---"] * (len(SPLITS) + 1))]
            lines += [_tr(n, *(counts.get(s, {}).get(what, {}).get(n, 0) for s in SPLITS)) for n in names]
            if what == "site":
                lines.append(_tr("(missing)", *(counts.get(s, {}).get("site_missing", 0) for s in SPLITS)))
            lines.append("")
    return "\n".join(lines)


def _metrics(metrics: dict, labels: BundleLabels) -> str:
    over = metrics.get("over_seeds", {}).get("metrics", {})
    seeds = metrics.get("over_seeds", {}).get("seeds", [])
    boot = (metrics.get("bootstrap") or {}).get("metrics", {})
    sel = metrics.get("selected_by", {})
    how = (
        f"named seed {sel.get('named')}"
        if sel.get("named") is not None
        else f"best {sel.get('metric')} ({sel.get('mode')})"
    )
    lines = [
        "\n## Metrics (held-out test split)",
        f"Exported seed {metrics.get('seed')}, chosen by {how}. Mean ± sd over {len(seeds)} retrain seed(s) "
        f"{seeds}; 95 % CI: percentile bootstrap over the test lesions of the exported seed.\n",
        _tr("metric", "exported seed", "95 % CI", "mean ± sd over seeds"),
        _tr(*["---"] * 4),
    ]
    for short in HEADLINE:
        key = f"test/{short}"
        if key in metrics.get("test", {}) or key in over:
            ci = boot.get(key)
            ci_text = f"[{_f(ci['low'])}, {_f(ci['high'])}]" if ci else "–"
            lines.append(_tr(short, _f(metrics.get("test", {}).get(key)), ci_text, _ms(over.get(key))))
    lines += ["\nPer-class recall (sensitivity):\n", _tr("class", "exported seed", "mean ± sd over seeds")]
    lines.append(_tr(*["---"] * 3))
    for c in labels.lesion:
        key = f"test/recall/{c}"
        lines.append(_tr(c, _f(metrics.get("test", {}).get(key)), _ms(over.get(key))))
    if metrics.get("per_site"):
        lines += [
            "\nPer body site (exported seed):\n",
            _tr("site", "images", "lesion accuracy", "site accuracy"),
        ]
        lines.append(_tr(*["---"] * 4))
        for site, row in metrics["per_site"].items():
            lines.append(_tr(site, row["images"], _f(row["lesion_acc"]), _f(row["site_acc"])))
    versus = metrics.get("mtl_vs_single_task") or metrics.get("vs_single_task")
    if versus:
        who = "Multi-task" if metrics.get("mtl_vs_single_task") else f"Arm `{metrics.get('arm')}`"
        lines += [f"\n{who} minus single-task baseline (paired over seeds, from the compare report):\n"]
        lines += [_tr("metric", "difference", "95 % CI"), _tr(*["---"] * 3)]
        for key, row in versus.items():
            if isinstance(row, dict):
                ci_text = f"[{_f(row.get('low'))}, {_f(row.get('high'))}]"
                lines.append(_tr(key, _f(row.get("diff")), ci_text))
    return "\n".join(lines)


def _limitations(
    labels: BundleLabels, info: dict | None, data: DataSection | None, calibration: dict | None = None
) -> str:
    fmt = data.format if data else ""
    items = []
    if _synthetic(data):
        items.append(
            "**Trained on synthetic images** (`skintune synth`): the metrics say nothing about real lesions. "
            "This bundle demonstrates the pipeline; do not use it on patients."
        )
    items.append(
        "**Skin tone.** Public dermoscopy collections (ISIC, HAM10000, derm7pt) come mostly from "
        "fair-skinned European, Australian and US populations (Fitzpatrick I–III). The data carry no "
        "skin-tone labels, so performance on darker skin is unmeasured and likely worse."
    )
    if fmt in DERMOSCOPY_FORMATS or not fmt:
        items.append(
            "**Dermoscopy only.** Trained on dermoscopic images; clinical (macroscopic) or smartphone "
            "photos are out of distribution."
        )
    else:
        items.append(
            f"**Image modality.** Trained on `{fmt}` images only; other devices or modalities are out of distribution."
        )
    if fmt == "isic2019" or {"anterior torso", "posterior torso"} <= set(labels.site):
        items.append(
            "**Torso labels (ISIC 2019).** The split of the torso into anterior / posterior / lateral is "
            "recorded differently by the contributing archives (HAM10000, BCN_20000, MSK), so site labels "
            "there partly encode the source hospital: site accuracy on the torso reflects labelling "
            "conventions more than anatomy, and the site head can pick up acquisition artefacts."
        )
    if info and float(info.get("site_missing_rate", 0.0)) > 0:
        items.append(
            f"**Missing sites.** {100 * float(info['site_missing_rate']):.1f} % of the images have no body "
            "site; those were left out of the site loss and site metrics."
        )
    scaled = (
        " Temperature scaling matches the confidence to the validation split's accuracy; it does not make "
        "them a clinic's risks."
        if calibration and calibration.get("fitted")
        else ""
    )
    items.append(
        f"**Closed vocabulary.** Only the {len(labels.lesion)} listed diagnoses; the class frequencies of "
        "the training data (not of a clinic's population) shape the probabilities, so they are not "
        f"calibrated risks.{scaled}"
    )
    return "\n## Limitations\n" + "\n".join(f"- {item}" for item in items)


def _weights(config: BundleConfig) -> str:
    source = config.weights_source or "unknown"
    if source == RANDOM_INIT:
        what = "none, the backbone was trained from random initialisation"
    elif source == HUB:
        what = "ImageNet weights from timm's Hugging Face hub"
    elif source.startswith("package:"):
        what = f"offline ImageNet weights from the Python package `{source.removeprefix('package:')}`"
    elif source.startswith("file:"):
        what = f"a user-supplied weights file `{source.removeprefix('file:')}`"
    else:
        what = source
    return f"\n## Pretrained weights\n- Backbone initialisation: {what} (recorded as `{source}`).\n"


def _synthetic(data: DataSection | None) -> bool:
    return data is not None and (data.format == "synthetic" or data.synth is not None)


def _tr(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _f(value) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def _ms(row: dict | None) -> str:
    return "–" if not row else f"{row['mean']:.3f} ± {row['sd']:.3f}"


def _fmt_list(values) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ")"
