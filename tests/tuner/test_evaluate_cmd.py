"""skintune evaluate on a real export: a tiny network trained (a few steps, CPU) on the synthetic ISIC 2019 data,
exported with `export_model`, then evaluated on HAM10000-, PAD-UFES-20- and ISIC 2020-format fixtures (their real
headers) and on the synthetic data's own test split. Checked: the vocabulary mapping, predictions.csv's columns and
order, that the reported balanced accuracy is the ISIC challenge's score of predictions.csv, TTA, and bad input
(one line, exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from tests.data.conftest import write_csv, write_ham10000, write_images, write_isic2020, write_pad_ufes20
from trainables.checkpoint import save_checkpoint
from trainables.config import TrainConfig
from trainables.data.loader import ShardDataset
from trainables.data.prepare import load_info
from trainables.factory import build_parts
from tuner.cli import main
from tuner.evaluate_cmd import OUTPUTS, run_evaluate
from tuner.export import export_model
from tuner.submission import balanced_accuracy_of

ISIC_COLUMNS = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


@pytest.fixture(scope="module")
def bundle(smoke_data, tmp_path_factory) -> Path:
    """An export of a test_efficientnet trained for two epochs on the synthetic ISIC 2019 data (smoke_data)."""
    prepared = smoke_data[1]
    info = load_info(prepared)
    cfg = TrainConfig(prepared=prepared, backbone="test_efficientnet", pretrained=False, seed=0)
    torch.manual_seed(0)
    parts = build_parts(cfg, info, with_loss=True)
    assert parts.loss is not None
    data = ShardDataset(prepared, "train", parts.train_transform())
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([*parts.model.parameters(), *parts.loss.parameters()], lr=3e-3)
    parts.model.train()
    for _ in range(2):
        for images, lesion, site in loader:
            optimizer.zero_grad()
            parts.loss(*parts.model(images), lesion, site)["loss"].backward()
            optimizer.step()
    exp = tmp_path_factory.mktemp("evaluate") / "synth-exp"
    seed_dir = exp / "retrain" / "mtl" / "seed_0"
    meta = {
        "config": cfg.model_dump(),
        "lesion_classes": info["lesion_classes"],
        "site_classes": info["site_classes"],
        "weights_source": parts.model.weights_source,
        "dataset_fingerprint": info["fingerprint"],
    }
    save_checkpoint(seed_dir / "checkpoint", parts.model, {"epoch": 2}, meta)
    metrics = {"arm": "mtl", "seed": 0, "epochs": 2, "val": {"val/lesion_bacc": 0.3}, "test": {}}
    (seed_dir / "metrics.json").write_text(json.dumps(metrics))
    return export_model(str(exp), str(exp.parent / "bundle"), n_boot=50)


def _with_synthetic_images(root: Path, smoke_root: str) -> Path:
    """Replace the fixture's 8x8 placeholder images (too small for prepare) with synthetic lesion images, each
    saved in its file's own format (PNG for PAD-UFES-20)."""
    sources = sorted(Path(smoke_root).rglob("*.jpg"))
    targets = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for source, target in zip(sources, targets, strict=False):
        Image.open(source).convert("RGB").save(target, format="PNG" if target.suffix.lower() == ".png" else "JPEG")
    return root


def _evaluate(bundle: Path, fmt: str, root: Path, out: Path, **kwargs) -> dict:
    return run_evaluate(bundle, fmt, root, out, n_boot=200, workers=1, cache=out.parent / "cache", **kwargs)


def _truth(result: dict, names: dict[str, str]) -> dict[str, str]:
    """image id -> submission column of its true class, from the dataset's labels ``names`` (image -> class)."""
    column = {name: row["column"] for name, row in result["lesion_mapping"].items()}
    return {image: column[name] for image, name in names.items() if name in column}


def _check_challenge_score(result: dict, out: Path, truth: dict[str, str]) -> pd.DataFrame:
    """predictions.csv read back: the ISIC layout, rows summing to 1, and metrics.json's balanced accuracy equal to
    the challenge's definition (and scikit-learn's) on that file."""
    frame = pd.read_csv(out / "predictions.csv")
    assert list(frame.columns) == ISIC_COLUMNS
    scores = frame.drop(columns="image")
    assert np.allclose(scores.sum(axis=1), 1.0) and (frame["UNK"] == 0.0).all()
    reported = result["metrics"]["lesion_bacc"]["estimate"]
    assert reported == pytest.approx(balanced_accuracy_of(frame, truth), abs=1e-12)
    actual = [truth[str(i)] for i in frame["image"]]
    predicted = scores.columns.to_numpy()[scores.to_numpy().argmax(axis=1)]
    assert reported == pytest.approx(balanced_accuracy_score(actual, predicted), abs=1e-12)
    assert result["metrics"]["lesion_acc"]["estimate"] == pytest.approx(np.mean(np.array(actual) == predicted))
    return frame


def test_ham10000_maps_every_class_and_scores_as_the_challenge(bundle, smoke_data, tmp_path):
    root = _with_synthetic_images(write_ham10000(tmp_path / "ham"), smoke_data[0])
    out = tmp_path / "eval-ham"
    result = _evaluate(bundle, "ham10000", root, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    mapping = {name: row["model_class"] for name, row in result["lesion_mapping"].items()}
    assert mapping == {"akiec": "AK", "bcc": "BCC", "bkl": "BKL", "df": "DF", "mel": "MEL", "nv": "NV", "vasc": "VASC"}
    assert result["left_out"] == {}
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    _check_challenge_score(result, out, _truth(result, dict(zip(meta["image_id"], meta["dx"], strict=True))))
    assert result["images_evaluated"] == len(meta) == sum(result["counts"].values())
    assert result["tta"] == {"views": 1, "on": False, "transforms": ["identity"]}
    assert result["site"]["mapping"]["back"] == "posterior torso"  # through ISIC's HAM10000 site mapping
    boot = result["bootstrap"]
    assert boot["unit"] == "lesion group" and boot["n_units"] == meta["lesion_id"].fillna(meta["image_id"]).nunique()
    for key, value in result["metrics"].items():
        assert value["low"] <= value["estimate"] <= value["high"] or np.isnan(value["low"]), key
    report = (out / "evaluate.md").read_text()
    assert "Test-time augmentation: off" in report and "| akiec | AK | AK |" in report
    assert (out / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


def test_pad_ufes20_with_tta_maps_sek_to_bkl_and_nev_to_nv(bundle, smoke_data, tmp_path):
    root = _with_synthetic_images(write_pad_ufes20(tmp_path / "pad"), smoke_data[0])
    out = tmp_path / "eval-pad"
    result = _evaluate(bundle, "pad_ufes20", root, out, tta=4)
    mapping = {name: row["model_class"] for name, row in result["lesion_mapping"].items()}
    assert mapping == {"ACK": "AK", "BCC": "BCC", "MEL": "MEL", "NEV": "NV", "SCC": "SCC", "SEK": "BKL"}
    meta = pd.read_csv(root / "metadata.csv")
    ids = [name.removesuffix(".png") for name in meta["img_id"]]
    frame = _check_challenge_score(result, out, _truth(result, dict(zip(ids, meta["diagnostic"], strict=True))))
    assert sorted(frame["image"]) == sorted(ids)
    assert result["tta"]["on"] and result["tta"]["views"] == 4
    assert "Test-time augmentation: on, 4 views" in (out / "evaluate.md").read_text()
    assert result["site"]["left_out"]["LIP"]["reason"] == "no ISIC 2019 equivalent"


def test_isic2020_lists_the_diagnoses_that_do_not_map_and_leaves_their_images_out(bundle, smoke_data, tmp_path):
    root = _with_synthetic_images(write_isic2020(tmp_path / "isic2020"), smoke_data[0])
    out = tmp_path / "eval-2020"
    result = _evaluate(bundle, "isic2020", root, out)
    images = {"unknown": 1, "lentigo NOS": 1, "cafe-au-lait macule": 0, "atypical melanocytic proliferation": 0}
    assert {name: row["images"] for name, row in result["left_out"].items()} == images
    assert result["left_out"]["unknown"]["reason"] == "no ISIC 2019 equivalent"
    mapping = {name: row["model_class"] for name, row in result["lesion_mapping"].items()}
    assert mapping == {"melanoma": "MEL", "nevus": "NV", "seborrheic keratosis": "BKL", "lichenoid keratosis": "BKL",
                       "solar lentigo": "BKL"}  # fmt: skip
    frame = pd.read_csv(out / "predictions.csv")
    assert sorted(frame["image"]) == ["ISIC_2000001", "ISIC_2000002", "ISIC_2000005"]
    assert result["images_evaluated"] == 3
    assert "Left out (not mapped, never merged)" in (out / "evaluate.md").read_text()


def test_own_test_split_metrics_match_direct_computation(bundle, smoke_data, tmp_path):
    """On the synthetic data's own test split (the same images prepare put there for training): the metrics are
    those of the predictions, computed independently with scikit-learn, and predict's probabilities."""
    out = tmp_path / "eval-synth"
    result = _evaluate(bundle, "isic2019", Path(smoke_data[0]), out, split="test")
    test = ShardDataset(smoke_data[1], "test")
    assert result["images_evaluated"] == len(test)
    frame = pd.read_csv(out / "predictions.csv")
    assert list(frame["image"]) == test.image_ids
    classes = load_info(smoke_data[1])["lesion_classes"]
    truth = {i: classes[c] for i, c in zip(test.image_ids, test.lesion, strict=True)}
    _check_challenge_score(result, out, truth)
    probs = frame[ISIC_COLUMNS[1:-1]].to_numpy()
    y = np.array([ISIC_COLUMNS[1:-1].index(truth[i]) for i in frame["image"]])
    aucs = [roc_auc_score(y == c, probs[:, c]) for c in np.unique(y)]
    assert result["metrics"]["lesion_auc"]["estimate"] == pytest.approx(np.mean(aucs), abs=1e-9)
    for c in np.unique(y):
        recall = np.mean(probs[y == c].argmax(1) == c)
        assert result["metrics"][f"recall/{ISIC_COLUMNS[1 + c]}"]["estimate"] == pytest.approx(recall)
    assert result["site"]["metrics"]["site_acc"]["estimate"] >= 0.0
    # the same images through `skintune predict`'s path give the same probabilities
    from tuner.predict import load_bundle

    loaded = load_bundle(bundle)
    first = torch.stack([loaded.transform(test.decode(i)) for i in range(4)])
    temperature = getattr(loaded.config, "temperature", 1.0)  # calibration: lesion logits / T before softmax
    assert result["temperature"] == temperature
    with torch.no_grad():
        expected = torch.softmax(loaded.model(first)[0].double() / temperature, 1).numpy()
    order = [loaded.lesion_classes.index(c) for c in ISIC_COLUMNS[1:-1]]
    assert np.allclose(probs[:4], expected[:, order], atol=1e-5)


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("skintune: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line_and_exit_2(bundle, smoke_data, tmp_path, capsys):
    ham = _with_synthetic_images(write_ham10000(tmp_path / "ham"), smoke_data[0])
    base = ["evaluate", "--model", str(bundle), "--root", str(ham), "--out", str(tmp_path / "o")]

    err = _error(capsys, [*base, "--format", "ham1000"])
    assert "unknown dataset format 'ham1000'" in err and "ham10000" in err

    # a dataset with no class that maps: a generic CSV of other diagnoses
    write_csv(tmp_path / "other" / "labels.csv", "image,lesion", ["a,wart", "b,cyst", "c,wart"])
    write_images(tmp_path / "other", ["a.jpg", "b.jpg", "c.jpg"])
    other = [
        str(tmp_path / "other"),
        "--option",
        "file=labels.csv",
        "--option",
        "extension=.jpg",
        "--option",
        "site_column=null",
    ]
    err = _error(capsys, ["evaluate", "--model", str(bundle), "--format", "csv", "--root", *other, "--out", "x"])
    assert "no csv class maps to a class of the model" in err and "wart: no ISIC 2019 equivalent" in err

    # an incomplete export folder
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "model.safetensors").unlink()
    err = _error(capsys, ["evaluate", "--model", str(broken), "--format", "ham10000", *base[3:]])
    assert "not a complete skintune export" in err and "model.safetensors" in err

    # a model whose vocabulary has no ISIC 2019 names: HAM10000 cannot be mapped onto it
    custom = tmp_path / "custom"
    shutil.copytree(bundle, custom)
    labels = json.loads((custom / "labels.json").read_text())
    labels["lesion"] = [f"type{i}" for i in range(len(labels["lesion"]))]
    (custom / "labels.json").write_text(json.dumps(labels))
    err = _error(capsys, ["evaluate", "--model", str(custom), "--format", "ham10000", *base[3:]])
    assert "have no ISIC 2019 names" in err and "'ham10000'" in err

    err = _error(capsys, [*base, "--format", "ham10000", "--tta", "9"])
    assert "tta=9" in err
    assert not (tmp_path / "o").exists()  # nothing written for refused input


def test_evaluate_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--help"])
    assert exit_.value.code == 0
    assert "skintune evaluate --model" in capsys.readouterr().out


def test_a_metadata_model_gets_each_images_recorded_site_age_and_sex(smoke_data, tmp_path):
    """A bundle with metadata inputs (site, age, sex) evaluated on HAM10000: each image's site goes in as the model's
    site through the ISIC mapping (``trunk``, ``genital`` and ``unknown`` as missing), with its age and sex; the
    probabilities are the network's on those codes, and differ from what it gives with every field missing."""
    prepared = smoke_data[1]
    info = load_info(prepared)
    cfg = TrainConfig(
        prepared=prepared, backbone="test_efficientnet", pretrained=False, metadata_inputs=["site", "age", "sex"]
    )
    torch.manual_seed(1)
    parts = build_parts(cfg, info, with_loss=True)
    exp = tmp_path / "meta-exp"
    seed_dir = exp / "retrain" / "mtl" / "seed_0"
    meta = {"config": cfg.model_dump(), "lesion_classes": info["lesion_classes"], "site_classes": info["site_classes"]}
    save_checkpoint(seed_dir / "checkpoint", parts.model, {"epoch": 1}, meta)
    (seed_dir / "metrics.json").write_text(json.dumps({"seed": 0, "val": {"val/lesion_bacc": 0.2}, "test": {}}))
    bundle = export_model(str(exp), str(tmp_path / "meta-bundle"), n_boot=20)

    root = _with_synthetic_images(write_ham10000(tmp_path / "ham"), smoke_data[0])
    out = tmp_path / "eval-meta"
    result = _evaluate(bundle, "ham10000", root, out)
    assert result["inputs"]["metadata"] == ["site", "age", "sex"]
    assert result["inputs"]["sites_given_as_missing"] == ["genital", "trunk"]
    assert result["inputs"]["site_mapping"]["scalp"] == "head/neck"
    assert "the recorded site, age, sex" in (out / "evaluate.md").read_text()

    from trainables.data.adapters.ham10000 import TO_ISIC_SITE
    from tuner.predict import load_bundle

    loaded = load_bundle(bundle)
    data = ShardDataset(result["dataset"]["prepared"], "train", loaded.transform)
    sites = loaded.config.metadata_sites
    site_names = data.info["site_classes"]
    codes = [
        sites.index(TO_ISIC_SITE[site_names[s]]) if s >= 0 and site_names[s] in TO_ISIC_SITE else -1 for s in data.site
    ]
    raw = torch.tensor(np.stack([codes, data.age, data.sex], axis=1), dtype=torch.float32)
    x = torch.stack([data[i][0] for i in range(len(data))])
    temperature = getattr(loaded.config, "temperature", 1.0)
    with torch.no_grad():
        expected = torch.softmax(loaded.model(x, raw)[0].double() / temperature, 1).numpy()
        blank = torch.softmax(loaded.model(x, torch.full_like(raw, float("nan")))[0].double() / temperature, 1).numpy()
    frame = pd.read_csv(out / "predictions.csv").set_index("image").loc[data.image_ids]
    order = [loaded.lesion_classes.index(c) for c in ISIC_COLUMNS[1:-1]]
    got = frame[ISIC_COLUMNS[1:-1]].to_numpy()
    assert np.allclose(got, expected[:, order], atol=1e-5)
    assert not np.allclose(got, blank[:, order], atol=1e-4)
