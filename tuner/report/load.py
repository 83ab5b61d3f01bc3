"""Read one experiment's outputs (config, dataset.json, search table, retrain predictions) into
:class:`Inputs`.

Layout read (under ``<storage>/<name>/``): ``experiment.yaml`` (typed by :func:`tuner.config.load_experiment`),
``prepared/dataset.json`` (or the ``data.prepared`` folder named in experiment.yaml), ``tune/results.parquet``
(optional), ``retrain/summary.json`` and ``retrain/<arm>/seed_<k>/{predictions.parquet,metrics.json}``.
Predictions of all seeds and both arms are aligned to one image order, so every paired statistic pairs the same
image.
Anything missing or inconsistent is a :class:`UserError` naming the file and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainables.errors import UserError
from tuner.config import ExperimentConfig, load_experiment

ARMS = ("mtl", "single_task")


@dataclass
class Inputs:
    experiment_dir: Path
    experiment: ExperimentConfig  # experiment.yaml, typed
    dataset: dict  # dataset.json
    summary: dict  # retrain/summary.json
    seeds: list[int]
    image_ids: np.ndarray  # (n,) test images, one order for every seed and arm
    lesion: np.ndarray  # (n,) true lesion class
    site: np.ndarray  # (n,) true site, -1 = missing
    groups: np.ndarray | None  # (n,) lesion (or patient) group ids; None in predictions written before they were
    probs: dict[str, list[np.ndarray]]  # arm -> one (n, n_lesion) array per seed
    site_probs: list[np.ndarray | None]  # MTL site head, one (n, n_site) array per seed
    metrics: dict[str, list[dict]]  # arm -> metrics.json per seed
    trials: pd.DataFrame | None  # tune/results.parquet, None without a search

    @property
    def config(self) -> dict:
        """experiment.yaml as a plain dict, every default filled in (what the report prints and reads)."""
        return self.experiment.model_dump(mode="json")

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def lesion_classes(self) -> list[str]:
        return list(self.dataset["lesion_classes"])

    @property
    def site_classes(self) -> list[str]:
        return list(self.dataset["site_classes"])

    def preds(self, arm: str) -> list[np.ndarray]:
        return [p.argmax(axis=1) for p in self.probs[arm]]


def _read_json(path: Path, fix: str) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: not found; {fix}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); {fix}") from None


def _read_config(root: Path) -> ExperimentConfig:
    path = root / "experiment.yaml"
    if not path.is_file():
        raise UserError(f"{path}: not found; is {root} an experiment folder (<storage>/<name>)? Check --storage")
    return load_experiment(path)


def _read_dataset(root: Path, experiment: ExperimentConfig) -> dict:
    candidates = [root / "prepared" / "dataset.json"]
    prepared = experiment.data.prepared
    if prepared:
        candidates.append(Path(prepared).expanduser() / "dataset.json")
    for path in candidates:
        if path.is_file():
            return _read_json(path, "rerun `skintune prepare`")
    tried = " or ".join(str(p) for p in candidates)
    raise UserError(f"no dataset.json at {tried}: run `skintune prepare --config <experiment.yaml>` first")


def _read_predictions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: not found; rerun `skintune retrain` (it writes predictions for every seed)")
    frame = pd.read_parquet(path)
    missing = {"image_id", "lesion", "site", "lesion_probs"} - set(frame.columns)
    if missing:
        raise UserError(f"{path}: missing column(s) {sorted(missing)}; rerun `skintune retrain`")
    return frame.set_index(frame["image_id"].astype(str))


def _align(frames: dict[tuple[str, int], pd.DataFrame], ref_key: tuple[str, int], root: Path) -> dict:
    """Reorder every run's rows to the reference run's image order; images and true labels must agree."""
    ref = frames[ref_key]
    out = {}
    for (arm, seed), frame in frames.items():
        where = f"{root}/retrain/{arm}/seed_{seed}/predictions.parquet"
        if len(frame) != len(ref) or not frame.index.isin(ref.index).all() or frame.index.has_duplicates:
            raise UserError(
                f"{where}: its test images differ from {ref_key[0]}/seed_{ref_key[1]}'s; rerun "
                "`skintune retrain` so that every run predicts the same test split"
            )
        aligned = frame.loc[ref.index]
        if not (aligned["lesion"].to_numpy() == ref["lesion"].to_numpy()).all():
            raise UserError(f"{where}: true lesion labels differ from {ref_key[0]}/seed_{ref_key[1]}'s")
        out[arm, seed] = aligned
    return out


def _stack(values: pd.Series) -> np.ndarray:
    return np.stack([np.asarray(v, dtype=float) for v in values])


def _read_retrain(root: Path, name: str) -> tuple[dict, dict, dict]:
    retrain = root / "retrain"
    if not retrain.is_dir():
        raise UserError(f"no retrain results under {retrain}: run `skintune retrain --experiment {name}` first")
    summary = _read_json(retrain / "summary.json", f"run `skintune retrain --experiment {name}`")
    seeds = [int(s) for s in summary.get("seeds") or []]
    if not seeds:
        raise UserError(f"{retrain / 'summary.json'}: no seeds listed; rerun `skintune retrain --experiment {name}`")
    frames: dict[tuple[str, int], pd.DataFrame] = {}
    metrics: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for arm in ARMS:
        for seed in seeds:
            run = retrain / arm / f"seed_{seed}"
            frames[arm, seed] = _read_predictions(run / "predictions.parquet")
            metrics[arm].append(_read_json(run / "metrics.json", f"rerun `skintune retrain --experiment {name}`"))
    return summary, frames, metrics


def _read_trials(root: Path) -> pd.DataFrame | None:
    path = root / "tune" / "results.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def load_inputs(experiment_dir: str | Path) -> Inputs:
    root = Path(experiment_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"no experiment at {root}: check --experiment and --storage")
    experiment = _read_config(root)
    summary, frames, metrics = _read_retrain(root, experiment.name)
    dataset = _read_dataset(root, experiment)
    seeds = [int(s) for s in summary["seeds"]]
    frames = _align(frames, ("mtl", seeds[0]), root)
    ref = frames["mtl", seeds[0]]
    n_lesion, n_site = len(dataset["lesion_classes"]), len(dataset["site_classes"])
    probs = {arm: [_stack(frames[arm, s]["lesion_probs"]) for s in seeds] for arm in ARMS}
    for arm in ARMS:
        if any(p.shape != (len(ref), n_lesion) for p in probs[arm]):
            raise UserError(f"{root}/retrain/{arm}: lesion_probs must have {n_lesion} values per image")
    site_probs = []
    for s in seeds:
        col = frames["mtl", s].get("site_probs")
        ok = col is not None and col.notna().all()
        site_probs.append(_stack(col) if ok and len(col.iloc[0]) == n_site else None)
    return Inputs(
        experiment_dir=root,
        experiment=experiment,
        dataset=dataset,
        summary=summary,
        seeds=seeds,
        image_ids=ref.index.to_numpy(),
        lesion=ref["lesion"].to_numpy(dtype=int),
        site=ref["site"].to_numpy(dtype=int),
        groups=ref["group_id"].astype(str).to_numpy() if "group_id" in ref.columns else None,
        probs=probs,
        site_probs=site_probs,
        metrics=metrics,
        trials=_read_trials(root),
    )
