"""Predictions in the ISIC challenge submission format (``skintune evaluate``, ``skintune predict --format isic``).

One row per image: the column ``image`` (the image id, without extension), then one probability column per class
of the model in the ISIC 2019 order (:data:`ISIC_2019_ORDER`). A model of the ISIC 2019 vocabulary (every class an
ISIC 2019 name) gets the ``UNK`` column too, at 0.0 (the challenge's "none of the others" class, which skintune does
not predict; a model trained on data that marks ``UNK`` keeps its own ``UNK`` probabilities). A model of another
vocabulary (HAM10000's ``akiec``..., PAD-UFES-20's ``NEV``...) gets the ISIC 2019 names of its classes
(:mod:`trainables.data.vocab`); a class without a single ISIC 2019 name keeps its own name and comes after, in the
model's order. The probabilities are the model's, unchanged: each row still sums to 1 (before the ``UNK`` 0.0).

The challenge scores the argmax of each row against the truth: balanced accuracy is the mean recall over the
classes present in the truth (:func:`balanced_accuracy_of`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trainables import storage
from trainables.data.vocab import isic_lesion
from trainables.errors import UserError

ISIC_2019_ORDER = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
UNK = "UNK"
IMAGE = "image"


def column_names(classes: Sequence[str]) -> list[str]:
    """The submission column of each model class, in the model's order (see the module docstring)."""
    isic = [isic_lesion(name) for name in classes]
    names: list[str] = []
    for name, target in zip(classes, isic, strict=True):
        unique = target is not None and isic.count(target) == 1 and (target == name or target not in classes)
        names.append(target if unique and target is not None else name)
    return names


def is_isic2019_vocabulary(classes: Sequence[str]) -> bool:
    """Whether every class is an ISIC 2019 name as it is (the model was trained on the ISIC 2019 vocabulary)."""
    return all(name in (*ISIC_2019_ORDER, UNK) for name in classes)


def submission_frame(images: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """``image`` then one column per class in the ISIC 2019 order (others after), plus ``UNK`` = 0.0 for an ISIC
    2019-vocabulary model; ``probs`` is ``(len(images), len(classes))`` in the model's class order."""
    classes = list(classes)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(images), len(classes)):
        raise ValueError(f"need ({len(images)}, {len(classes)}) probabilities, got {probs.shape}")
    names = column_names(classes)
    rank = {name: k for k, name in enumerate((*ISIC_2019_ORDER, UNK))}  # others after them, in model order
    columns = sorted(range(len(classes)), key=lambda j: (rank.get(names[j], len(rank)), j))
    frame = pd.DataFrame({IMAGE: [str(i) for i in images]})
    for j in columns:
        frame[names[j]] = probs[:, j]
    if is_isic2019_vocabulary(classes) and UNK not in classes:
        at = 1 + sum(names[j] in ISIC_2019_ORDER for j in columns)
        frame.insert(at, UNK, 0.0)
    return frame


def write_submission(path: str | Path, frame: pd.DataFrame) -> str:
    """Write ``frame`` as the submission CSV (no index; floats written in full); a local path or a URI."""
    if list(frame.columns[:1]) != [IMAGE]:
        raise ValueError(f"a submission frame starts with the column {IMAGE!r}, got {list(frame.columns[:1])}")
    path = str(path)
    if not storage.is_uri(path):
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        path = str(Path(path).expanduser())
    storage.write_text(path, frame.to_csv(index=False))
    return path


def balanced_accuracy_of(frame: pd.DataFrame, truth: Mapping[str, str]) -> float:
    """The ISIC challenge's balanced accuracy of a submission frame: each row's argmax column against
    ``truth`` (image -> column name), averaged as the mean recall over the truth's classes present."""
    missing = [image for image in frame[IMAGE] if str(image) not in truth]
    if missing:
        raise UserError(f"image {missing[0]!r} of the submission has no ground truth ({len(missing)} such)")
    scores = frame.drop(columns=[IMAGE])
    predicted = scores.columns.to_numpy()[scores.to_numpy(dtype=np.float64).argmax(axis=1)]
    actual = np.array([truth[str(image)] for image in frame[IMAGE]])
    return float(np.mean([np.mean(predicted[actual == c] == c) for c in np.unique(actual)]))
