"""The ISIC submission layout (tuner/submission.py): columns and their order, UNK for an ISIC 2019-vocabulary
model, other vocabularies renamed to ISIC 2019 names, probabilities unchanged, and the challenge's balanced
accuracy recomputed from the written file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tuner.submission import ISIC_2019_ORDER, balanced_accuracy_of, submission_frame, write_submission


def _probs(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(k), n)


def test_isic2019_model_gets_isic_order_and_unk_and_keeps_its_probabilities(tmp_path):
    classes = ["NV", "MEL", "SCC", "BCC", "AK", "BKL", "DF", "VASC"]  # a model's head order, not the ISIC one
    probs = _probs(5, 8)
    frame = submission_frame([f"ISIC_{i}" for i in range(5)], probs, classes)
    assert list(frame.columns) == ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    assert (frame["UNK"] == 0.0).all()
    for j, name in enumerate(classes):
        assert np.array_equal(frame[name].to_numpy(), probs[:, j]), name
    assert np.allclose(frame.drop(columns="image").sum(axis=1), 1.0)

    path = write_submission(tmp_path / "sub" / "predictions.csv", frame)
    back = pd.read_csv(path)
    assert list(back.columns) == list(frame.columns)
    assert list(back["image"]) == [f"ISIC_{i}" for i in range(5)]
    assert np.array_equal(back.drop(columns="image").to_numpy(), frame.drop(columns="image").to_numpy())


def test_subset_of_isic_classes_keeps_isic_order_with_unk():
    frame = submission_frame(["a", "b"], _probs(2, 3), ["BCC", "MEL", "NV"])
    assert list(frame.columns) == ["image", "MEL", "NV", "BCC", "UNK"]


def test_a_model_that_predicts_unk_keeps_its_own_unk_column():
    probs = _probs(3, 9)
    frame = submission_frame(["a", "b", "c"], probs, [*ISIC_2019_ORDER, "UNK"])
    assert list(frame.columns) == ["image", *ISIC_2019_ORDER, "UNK"]
    assert np.array_equal(frame["UNK"].to_numpy(), probs[:, 8])


def test_other_vocabularies_get_isic_names_and_no_unk():
    ham = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    probs = _probs(4, 7)
    frame = submission_frame(list("wxyz"), probs, ham)
    assert list(frame.columns) == ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC"]
    assert np.array_equal(frame["AK"].to_numpy(), probs[:, 0]) and np.array_equal(frame["MEL"].to_numpy(), probs[:, 4])
    pad = ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
    assert list(submission_frame(["a"], _probs(1, 6), pad).columns) == ["image", "MEL", "NV", "BCC", "AK", "BKL", "SCC"]


def test_classes_without_a_single_isic_name_keep_their_names_after_the_isic_ones():
    classes = ["unknown", "nevus", "melanoma", "seborrheic keratosis", "solar lentigo"]  # two map to BKL
    frame = submission_frame(["a"], _probs(1, 5), classes)
    assert list(frame.columns) == ["image", "MEL", "NV", "unknown", "seborrheic keratosis", "solar lentigo"]


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        submission_frame(["a", "b"], _probs(2, 4), ["MEL", "NV", "BCC"])


def test_challenge_balanced_accuracy_is_mean_recall_over_present_classes():
    # truth: 2 MEL, 1 NV (no BCC): MEL recall 1/2, NV recall 1 -> 0.75 (sklearn agrees: absent classes ignored)
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    frame = submission_frame(["a", "b", "c"], probs, ["MEL", "NV", "BCC"])
    assert balanced_accuracy_of(frame, {"a": "MEL", "b": "MEL", "c": "NV"}) == pytest.approx(0.75)
