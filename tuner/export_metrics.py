"""The ``metrics.json`` of an export bundle (``skintune export``, see :mod:`tuner.export`).

- ``arm``: the retrained arm exported (``mtl`` by default; ``meta``, ``mtl_meta``, ``single_task``);
- ``val`` / ``test``: the exported seed's metrics from its ``retrain/<arm>/seed_<k>/metrics.json``;
- ``over_seeds``: mean, sd (ddof 1) and per-seed values of every test metric all of the arm's seeds report;
- ``bootstrap``: 95 % percentile bootstrap CIs of the exported seed's test metrics (from its
  ``predictions.parquet``), resampling lesion groups (a lesion's images are drawn together), for lesion balanced
  accuracy, accuracy, macro one-vs-rest AUC, site accuracy and site balanced accuracy, each with the point
  estimate (:mod:`tuner.stats`, the report's resampling code); ``None`` without predictions;
- ``per_site``: per body site (and ``missing``), images, lesion accuracy and the site head's accuracy;
- ``mtl_vs_single_task`` (the ``mtl`` arm): ``report/ci.json`` as ``skintune compare`` wrote it, when there is
  one; ``vs_single_task`` (another arm): its entry of ``report/arms.json``, when there is one;
- ``calibration`` (:func:`calibration_entry`): the lesion head's temperature, fitted on the validation split, and
  NLL and ECE before and after it on the validation split (where it was fitted) and on the test split (the
  exported seed's ``predictions.parquet``, held out from the fit).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from trainables.calibration import ECE_BINS, calibration_numbers, fit_temperature, logits_from_probs
from tuner import stats

CALIBRATION_METHOD = "temperature scaling of the lesion logits, T fitted on the validation split by minimising NLL"


def build_metrics(
    exp_dir: Path, runs: dict[int, dict], chosen: int, labels: dict, n_boot: int = 1000, arm: str = "mtl"
) -> dict:
    run = runs[chosen]
    keys = sorted(set.intersection(*(set(r.get("test", {})) for r in runs.values())))
    over = {}
    for key in keys:
        values = np.array([float(runs[k]["test"][key]) for k in sorted(runs)])
        sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        over[key] = {"mean": float(values.mean()), "sd": sd, "values": values.tolist()}
    out = {
        "arm": arm,
        "seed": chosen,
        "epochs": run.get("epochs"),
        "val": run.get("val", {}),
        "test": run.get("test", {}),
        "over_seeds": {"seeds": sorted(runs), "metrics": over},
        "bootstrap": None,
        "per_site": None,
    }
    preds_path = exp_dir / "retrain" / arm / f"seed_{chosen}" / "predictions.parquet"
    if preds_path.exists():
        preds = pd.read_parquet(preds_path)
        if len(preds):
            out["bootstrap"] = bootstrap_ci(preds, n_boot=n_boot)
            out["per_site"] = per_site(preds, labels)
    ci_path, arms_path = exp_dir / "report" / "ci.json", exp_dir / "report" / "arms.json"
    if arm == "mtl" and ci_path.exists():
        out["mtl_vs_single_task"] = json.loads(ci_path.read_text())
    elif arm != "single_task" and arms_path.exists():
        entry = json.loads(arms_path.read_text()).get(arm)
        if entry:
            out["vs_single_task"] = entry
    return out


def bootstrap_ci(preds: pd.DataFrame, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap over the lesion groups of ``preds`` (columns lesion, site, lesion_probs, site_probs,
    group_id; every image of a drawn lesion comes along, as in the report), or over its rows when the predictions
    predate the group_id column."""
    y = preds["lesion"].to_numpy(np.int64)
    p = np.stack(preds["lesion_probs"].to_numpy()).astype(np.float64)
    groups = preds["group_id"].astype(str).to_numpy() if "group_id" in preds else None
    ci = functools.partial(stats.bootstrap_ci, n_boot=n_boot, seed=seed, level=level)
    metrics = {
        "test/lesion_bacc": ci(y, p, stats.balanced_accuracy, groups=groups),
        "test/lesion_acc": ci(y, p, stats.accuracy, groups=groups),
        "test/lesion_auc": ci(y, p, stats.macro_auc, groups=groups),
    }
    site_p, s = _site_probs(preds), preds["site"].to_numpy(np.int64)
    known = s != -1
    if site_p is not None and known.any():  # the site head is scored on images with a known site only
        known_groups = None if groups is None else groups[known]
        metrics["test/site_acc"] = ci(s[known], site_p[known], stats.accuracy, groups=known_groups)
        metrics["test/site_bacc"] = ci(s[known], site_p[known], stats.balanced_accuracy, groups=known_groups)
    unit = "image" if groups is None else "lesion group"
    n_units = len(y) if groups is None else len(np.unique(groups))
    return {
        "level": level,
        "n_boot": n_boot,
        "n_images": len(y),
        "unit": unit,
        "n_units": n_units,
        "seed": seed,
        "metrics": metrics,
    }


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


def calibration_entry(val: tuple[np.ndarray, np.ndarray] | None, reason: str | None, test_predictions: Path) -> dict:
    """``metrics.json``'s ``calibration``: ``temperature`` fitted on ``val`` (lesion logits, labels), ``val`` and
    ``test`` NLL / ECE (:data:`~trainables.calibration.ECE_BINS` bins) before and after it; without ``val``, a
    temperature of 1 and the ``reason``. The test numbers come from the exported seed's stored test probabilities
    (``log p`` rescales exactly as the logits would)."""
    entry: dict = {"method": CALIBRATION_METHOD, "temperature": 1.0, "fitted": False, "ece_bins": ECE_BINS}
    if val is None:
        return {**entry, "reason": reason, "val": None, "test": None}
    logits, labels = val
    t = fit_temperature(logits, labels)
    entry.update(temperature=t, fitted=True, val=calibration_numbers(logits, labels, t), test=None)
    if test_predictions.exists():
        preds = pd.read_parquet(test_predictions)
        if len(preds):
            probs = np.stack(preds["lesion_probs"].to_numpy()).astype(np.float64)
            test_logits = logits_from_probs(probs)
            entry["test"] = calibration_numbers(test_logits, preds["lesion"].to_numpy(np.int64), t)
    return entry
