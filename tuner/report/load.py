"""Read one experiment's outputs (config, dataset.json, search table, retrain predictions) into
:class:`Inputs`.

Layout read (under ``<storage>/<name>/``): ``experiment.yaml`` (typed by :func:`tuner.config.load_experiment`),
``prepared/dataset.json`` (or the ``data.prepared`` folder named in experiment.yaml), ``tune/results.parquet``
(optional), ``retrain/summary.json`` and ``retrain/<arm>/seed_<k>/{predictions.parquet,metrics.json}`` for each arm
summary.json lists (``arms``; before named arms: mtl and single_task). Predictions of all seeds and arms are
aligned to one image order, so every paired statistic pairs the same image.
Anything missing or inconsistent is a :class:`UserError` naming the file and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainables.errors import UserError
from tuner.arms import ARMS as KNOWN_ARMS
from tuner.arms import REFERENCE
from tuner.config import ExperimentConfig, load_experiment

ARMS = ("mtl", "single_task")  # the arms of a summary.json written before named arms


@dataclass
class Inputs:
    experiment_dir: Path
    experiment: ExperimentConfig  # experiment.yaml, typed
    dataset: dict  # dataset.json
    summary: dict  # retrain/summary.json
    arms: tuple[str, ...]  # the compared arms, in summary.json's order; single_task (the reference) among them
    seeds: list[int]
    image_ids: np.ndarray  # (n,) test images, one order for every seed and arm
    lesion: np.ndarray  # (n,) true lesion class
    site: np.ndarray  # (n,) true site, -1 = missing
    groups: np.ndarray | None  # (n,) lesion (or patient) group ids; None in predictions written before they were
    probs: dict[str, list[np.ndarray]]  # arm -> one (n, n_lesion) array per seed
    site_probs: dict[str, list[np.ndarray | None]]  # arm -> its site head's (n, n_site) array per seed, or None
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

    @property
    def compared(self) -> tuple[str, ...]:
        """The arms compared with single-task, in order."""
        return tuple(a for a in self.arms if a != REFERENCE)

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


def _arms(summary: dict, where: Path) -> tuple[str, ...]:
    arms = tuple(str(a) for a in summary.get("arms") or ARMS)
    unknown = [a for a in arms if a not in KNOWN_ARMS]
    if unknown or REFERENCE not in arms or len(arms) < 2 or len(set(arms)) < len(arms):
        raise UserError(
            f"{where}: arms {list(arms)} must be distinct, known ({', '.join(KNOWN_ARMS)}) and include "
            f"{REFERENCE} with at least one other; rerun `skintune retrain`"
        )
    return arms


def _read_retrain(root: Path, name: str) -> tuple[dict, tuple[str, ...], dict, dict]:
    retrain = root / "retrain"
    if not retrain.is_dir():
        raise UserError(f"no retrain results under {retrain}: run `skintune retrain --experiment {name}` first")
    summary = _read_json(retrain / "summary.json", f"run `skintune retrain --experiment {name}`")
    seeds = [int(s) for s in summary.get("seeds") or []]
    if not seeds:
        raise UserError(f"{retrain / 'summary.json'}: no seeds listed; rerun `skintune retrain --experiment {name}`")
    arms = _arms(summary, retrain / "summary.json")
    frames: dict[tuple[str, int], pd.DataFrame] = {}
    metrics: dict[str, list[dict]] = {arm: [] for arm in arms}
    for arm in arms:
        for seed in seeds:
            run = retrain / arm / f"seed_{seed}"
            frames[arm, seed] = _read_predictions(run / "predictions.parquet")
            metrics[arm].append(_read_json(run / "metrics.json", f"rerun `skintune retrain --experiment {name}`"))
    return summary, arms, frames, metrics


def _read_trials(root: Path) -> pd.DataFrame | None:
    path = root / "tune" / "results.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def load_inputs(experiment_dir: str | Path) -> Inputs:
    root = Path(experiment_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"no experiment at {root}: check --experiment and --storage")
    experiment = _read_config(root)
    summary, arms, frames, metrics = _read_retrain(root, experiment.name)
    dataset = _read_dataset(root, experiment)
    seeds = [int(s) for s in summary["seeds"]]
    frames = _align(frames, (arms[0], seeds[0]), root)
    ref = frames[arms[0], seeds[0]]
    n_lesion, n_site = len(dataset["lesion_classes"]), len(dataset["site_classes"])
    probs = {arm: [_stack(frames[arm, s]["lesion_probs"]) for s in seeds] for arm in arms}
    for arm in arms:
        if any(p.shape != (len(ref), n_lesion) for p in probs[arm]):
            raise UserError(f"{root}/retrain/{arm}: lesion_probs must have {n_lesion} values per image")
    site_probs: dict[str, list[np.ndarray | None]] = {arm: [] for arm in arms}
    for arm in arms:
        for s in seeds:
            col = frames[arm, s].get("site_probs")
            ok = KNOWN_ARMS[arm].multitask and col is not None and col.notna().all()
            site_probs[arm].append(_stack(col) if ok and len(col.iloc[0]) == n_site else None)
    return Inputs(
        experiment_dir=root,
        experiment=experiment,
        dataset=dataset,
        summary=summary,
        arms=arms,
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
