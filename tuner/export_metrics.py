"""The ``metrics.json`` of an export bundle (``skintune export``, see :mod:`tuner.export`).

- ``val`` / ``test``: the exported seed's metrics from its ``retrain/mtl/seed_<k>/metrics.json``;
- ``over_seeds``: mean, sd (ddof 1) and per-seed values of every test metric all MTL seeds report;
- ``bootstrap``: 95 % percentile bootstrap CIs over the test images of the exported seed (from its
  ``predictions.parquet``) of lesion balanced accuracy, accuracy, macro one-vs-rest AUC, site accuracy and
  site balanced accuracy, each with the point estimate (computed as :mod:`trainables.metrics` does); ``None``
  without predictions;
- ``per_site``: per body site (and ``missing``), images, lesion accuracy and the site head's accuracy;
- ``mtl_vs_single_task``: ``report/ci.json`` as ``skintune compare`` wrote it, when there is one.

Resamples are vectorised (one ``bincount`` / ``rankdata`` per metric), so 1000 resamples of a few thousand
test images take about a second.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from trainables.metrics import lesion_metrics, site_metrics


def build_metrics(exp_dir: Path, runs: dict[int, dict], chosen: int, labels: dict, n_boot: int = 1000) -> dict:
    run = runs[chosen]
    keys = sorted(set.intersection(*(set(r.get("test", {})) for r in runs.values())))
    over = {}
    for key in keys:
        values = np.array([float(runs[k]["test"][key]) for k in sorted(runs)])
        sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        over[key] = {"mean": float(values.mean()), "sd": sd, "values": values.tolist()}
    out = {
        "arm": "mtl",
        "seed": chosen,
        "epochs": run.get("epochs"),
        "val": run.get("val", {}),
        "test": run.get("test", {}),
        "over_seeds": {"seeds": sorted(runs), "metrics": over},
        "bootstrap": None,
        "per_site": None,
    }
    preds_path = exp_dir / "retrain" / "mtl" / f"seed_{chosen}" / "predictions.parquet"
    if preds_path.exists():
        preds = pd.read_parquet(preds_path)
        if len(preds):
            out["bootstrap"] = bootstrap_ci(preds, len(labels["lesion"]), len(labels["site"]), n_boot=n_boot)
            out["per_site"] = per_site(preds, labels)
    ci_path = exp_dir / "report" / "ci.json"
    if ci_path.exists():
        out["mtl_vs_single_task"] = json.loads(ci_path.read_text())
    return out


def bootstrap_ci(
    preds: pd.DataFrame, n_lesion: int, n_site: int, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict:
    """Percentile bootstrap over the rows of ``preds`` (columns lesion, site, lesion_probs, site_probs)."""
    y = preds["lesion"].to_numpy(np.int64)
    p = np.stack(preds["lesion_probs"].to_numpy()).astype(np.float64)
    n = len(y)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    hit = p.argmax(1) == y
    samples = {
        "test/lesion_bacc": _boot_bacc(y[idx], hit[idx], np.ones((n_boot, n)), n_lesion),
        "test/lesion_acc": hit[idx].mean(axis=1),
        "test/lesion_auc": _boot_auc(y[idx], p, idx, n_lesion),
    }
    point = {f"test/{k}": v for k, v in lesion_metrics(y, p, [str(i) for i in range(n_lesion)]).items()}
    site_p = _site_probs(preds)
    s = preds["site"].to_numpy(np.int64)
    if site_p is not None and (s != -1).any():
        s_hit, known = (site_p.argmax(1) == s), (s != -1).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            samples["test/site_acc"] = (s_hit * known)[idx].sum(1) / known[idx].sum(1)
        samples["test/site_bacc"] = _boot_bacc(np.where(s >= 0, s, 0)[idx], s_hit[idx], known[idx], n_site)
        point.update({f"test/{k}": v for k, v in site_metrics(s, site_p).items()})
    alpha = (1.0 - level) / 2
    metrics = {}
    for key, values in samples.items():
        values = values[np.isfinite(values)]
        low, high = np.quantile(values, [alpha, 1 - alpha]).tolist() if len(values) else (None, None)
        metrics[key] = {"estimate": point.get(key), "low": low, "high": high}
    return {"level": level, "n_boot": n_boot, "n_images": n, "seed": seed, "metrics": metrics}


def _boot_bacc(ys: np.ndarray, hit: np.ndarray, weight: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced accuracy of every resample (rows): mean recall over the classes present (weight > 0)."""
    n_boot = len(ys)
    flat = (np.arange(n_boot)[:, None] * n_classes + ys).ravel()
    size = n_boot * n_classes
    count = np.bincount(flat, weights=weight.ravel(), minlength=size).reshape(n_boot, n_classes)
    hits = np.bincount(flat, weights=(hit * weight).ravel(), minlength=size).reshape(n_boot, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any labelled row
        return np.nanmean(np.where(count > 0, hits / count, np.nan), axis=1)


def _boot_auc(ys: np.ndarray, p: np.ndarray, idx: np.ndarray, n_lesion: int) -> np.ndarray:
    """Macro one-vs-rest AUC (Mann-Whitney U, tied ranks averaged) of every resample, over classes present;
    0.5 with fewer than two classes present (as :func:`trainables.metrics.lesion_metrics`)."""
    aucs = np.full((len(idx), n_lesion), np.nan)
    for c in range(n_lesion):
        pos = ys == c
        n_pos = pos.sum(1)
        n_neg = ys.shape[1] - n_pos
        ranks = rankdata(p[idx, c], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs[:, c] = ((ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        aucs[(n_pos == 0) | (n_neg == 0), c] = np.nan
    present = np.isfinite(aucs).sum(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.where(present >= 2, np.nanmean(aucs, axis=1), 0.5)


def per_site(preds: pd.DataFrame, labels: dict) -> dict:
    """Per body site (and ``missing``): images, lesion accuracy and the site head's accuracy on them."""
    y = preds["lesion"].to_numpy(np.int64)
    hit = np.stack(preds["lesion_probs"].to_numpy()).argmax(1) == y
    s = preds["site"].to_numpy(np.int64)
    site_p = _site_probs(preds)
    s_hit = site_p.argmax(1) == s if site_p is not None else None
    out = {}
    for i, name in [*enumerate(labels["site"]), (-1, "missing")]:
        mask = s == i
        if mask.any():
            site_acc = float(s_hit[mask].mean()) if s_hit is not None and i >= 0 else None
            out[name] = {
                "images": int(mask.sum()),
                "lesion_acc": float(hit[mask].mean()),
                "site_acc": site_acc,
            }
    return out


def _site_probs(preds: pd.DataFrame) -> np.ndarray | None:
    """``(n, n_site)`` site probabilities; ``None`` for a single-task model (column absent, null or empty)."""
    if "site_probs" not in preds or not len(preds):
        return None
    first = preds["site_probs"].iloc[0]
    if first is None or len(first) == 0:
        return None
    return np.stack(preds["site_probs"].to_numpy()).astype(np.float64)
