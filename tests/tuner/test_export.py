"""skintune export + predict on a real (tiny) retrain layout built without Ray: two MTL seeds of a real
timm test network, their metrics.json / predictions.parquet, experiment.yaml, dataset.json and real images."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from trainables.calibration import calibration_numbers, fit_temperature
from trainables.checkpoint import save_checkpoint
from trainables.config import TrainConfig, parse_train_config
from trainables.data.images import prepare_image
from trainables.data.loader import ShardDataset, build_transforms
from trainables.errors import UserError
from trainables.metrics import lesion_metrics, site_metrics
from trainables.model import build_model
from trainables.pretrained import data_config
from tuner.bundle import BUNDLE_FILES
from tuner.export import export_model
from tuner.export_metrics import bootstrap_ci
from tuner.predict import load_bundle, predict_images, run_predict, write_predictions

LESION, SITE = ["MEL", "NV", "BCC"], ["anterior torso", "posterior torso"]
VAL_BACC = {0: 0.40, 1: 0.70}  # seed 1 is the best on validation
SIZE = 32


def _predictions(rng: np.random.Generator, n: int = 40) -> pd.DataFrame:
    lp, sp = rng.dirichlet(np.ones(3), n), rng.dirichlet(np.ones(2), n)
    return pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "lesion": rng.integers(0, 3, n),
            "site": rng.choice([-1, 0, 1], n),
            "lesion_probs": list(lp),
            "site_probs": list(sp),
        }
    )


def write_val_shard(prepared: Path, n: int, seed: int = 5) -> list[dict]:
    """A validation shard of ``n`` prepared images (JPEG at the prepared size, labels, sites, ages, sexes) under
    ``prepared/shards``; returns its ``dataset.json`` shard entries."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE + 6, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
    ids = [f"val{i}" for i in range(n)]
    table = {
        "image_id": ids,
        "group_id": ids,
        "image": blobs,
        "lesion": rng.integers(0, len(LESION), n),
        "site": rng.integers(-1, len(SITE), n),
        "age": rng.choice([np.nan, 30.0, 60.0], n),
        "sex": rng.integers(-1, 2, n),
    }
    (prepared / "shards").mkdir(exist_ok=True)
    pq.write_table(pa.table(table), prepared / "shards" / "val-0.parquet")
    return [{"file": "shards/val-0.parquet", "split": "val", "rows": n}]


def make_layout(
    base: Path,
    seeds=(0, 1),
    ci: bool = True,
    metadata_inputs=(),
    multitask: bool = True,
    val_images: int = 0,
    arm: str = "mtl",
) -> Path:
    """``<base>/results/demo`` as `skintune retrain` leaves it; returns the experiment folder. ``metadata_inputs``
    (with a fusion width of 8) and ``multitask`` are the retrained network's; ``val_images`` > 0 writes a
    validation shard (export then fits the temperature on it); ``arm`` is the retrain folder the seeds go to."""
    exp = base / "results" / "demo"
    prepared = exp / "prepared"
    prepared.mkdir(parents=True)
    counts = {
        s: {
            "images": 10,
            "lesion": dict.fromkeys(LESION, 3),
            "site": dict.fromkeys(SITE, 4),
            "site_missing": 2,
        }
        for s in ("train", "val", "test")
    }
    info = {
        "prepare_options": {"format": "isic2019", "image_size": SIZE, "quality": 90},
        "fingerprint": "f" * 64,
        "images": 30,
        "lesion_classes": LESION,
        "site_classes": SITE,
        "site_missing_rate": 0.2,
        "counts": counts,
        "shards": write_val_shard(prepared, val_images) if val_images else [],
    }
    (prepared / "dataset.json").write_text(json.dumps(info))
    experiment = {
        "name": "demo",
        "data": {"format": "isic2019", "root": str(base / "raw"), "synth": {"n": 64}, "image_size": SIZE},
        "tune": {"metric": "val/lesion_bacc", "mode": "max"},
    }
    (exp / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    rng = np.random.default_rng(0)
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model(
            "test_efficientnet",
            pretrained=False,
            num_lesion_classes=3,
            num_site_classes=2 if multitask else 0,
            dropout=0.1,
            metadata_inputs=metadata_inputs,
            num_sites=len(SITE),
            fusion_width=8,
        )
        seed_dir = exp / "retrain" / arm / f"seed_{seed}"
        cfg = {
            "backbone": "test_efficientnet",
            "dropout": 0.1,
            "multitask": multitask,
            "image_size": None,
            "prepared": str(prepared),
            "pretrained": False,
            "seed": seed,
        }
        if metadata_inputs:
            cfg.update(metadata_inputs=list(metadata_inputs), fusion_width=8)
        meta = {
            "config": cfg,
            "lesion_classes": LESION,
            "site_classes": SITE,
            "metrics": {},
            "weights_source": model.weights_source,
            "dataset_fingerprint": "f" * 64,
        }
        save_checkpoint(seed_dir / "checkpoint", model, state={"epoch": 0}, meta=meta)
        test = {
            "test/lesion_bacc": 0.5 + 0.1 * seed,
            "test/lesion_auc": 0.7,
            "test/lesion_acc": 0.6,
            "test/site_acc": 0.8,
            "test/site_bacc": 0.75,
            **{f"test/recall/{c}": 0.5 for c in LESION},
        }
        metrics = {
            "arm": arm,
            "seed": seed,
            "epochs": 1,
            "checkpoint": str(seed_dir / "checkpoint"),
            "val": {"val/lesion_bacc": VAL_BACC[seed]},
            "test": test,
            "wall_s": 1.0,
        }
        (seed_dir / "metrics.json").write_text(json.dumps(metrics))
        _predictions(rng).to_parquet(seed_dir / "predictions.parquet")
    if ci:
        (exp / "report").mkdir()
        (exp / "report" / "ci.json").write_text(
            json.dumps({"test/lesion_bacc": {"diff": 0.02, "low": -0.01, "high": 0.05}})
        )
    return exp


def make_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for name, size, mode in [
        ("a.jpg", (48, 40), "RGB"),
        ("b.png", (40, 60), "RGBA"),
        ("c.png", (36, 36), "L"),
        ("d.jpeg", (70, 50), "RGB"),
        ("e.png", (33, 45), "RGB"),
    ]:
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    exp = make_layout(base)
    out = export_model(str(exp), str(base / "bundle"), n_boot=200)
    return exp, out, make_images(base / "images")


def test_export_picks_best_val_seed_and_writes_bundle(exported):
    exp, out, _ = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(BUNDLE_FILES)
    assert not list(out.parent.glob(".bundle.*"))  # no temp or old folders left
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 1 and config["backbone"] == "test_efficientnet" and config["multitask"]
    assert config["image_size"] == SIZE == config["resize_size"]  # image_size None -> the prepared size
    norm = data_config("test_efficientnet")
    assert config["mean"] == list(norm["mean"]) and config["std"] == list(norm["std"])
    assert json.loads((out / "labels.json").read_text()) == {"lesion": LESION, "site": SITE}
    # safetensors of the bundle == the weights of seed 1's checkpoint, not seed 0's
    bundle = load_file(out / "model.safetensors")
    best = load_file(exp / "retrain/mtl/seed_1/checkpoint/model.safetensors")
    other = load_file(exp / "retrain/mtl/seed_0/checkpoint/model.safetensors")
    assert bundle.keys() == best.keys()
    assert all(torch.equal(bundle[k], best[k]) for k in best)
    assert not all(torch.equal(bundle[k], other[k]) for k in other)


def test_metrics_json_and_model_card(exported):
    _, out, _ = exported
    m = json.loads((out / "metrics.json").read_text())
    assert m["seed"] == 1 and m["selected_by"]["value"] == VAL_BACC[1]
    row = m["over_seeds"]["metrics"]["test/lesion_bacc"]
    assert row["mean"] == pytest.approx(0.55) and row["sd"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    for key in ("test/lesion_bacc", "test/lesion_acc", "test/lesion_auc", "test/site_acc", "test/site_bacc"):
        ci = m["bootstrap"]["metrics"][key]
        assert ci["low"] <= ci["estimate"] <= ci["high"], key
    assert m["mtl_vs_single_task"]["test/lesion_bacc"]["diff"] == 0.02
    assert set(m["per_site"]) <= {*SITE, "missing"} and sum(r["images"] for r in m["per_site"].values()) == 40
    card = (out / "MODEL_CARD.md").read_text()
    for text in (
        "Not a diagnostic device",
        "synthetic",
        "Skin tone",
        "Dermoscopy only",
        "Torso labels",
        "none (random init)",
        "0.550 ± 0.071",
        "anterior torso",
        "| MEL |",
    ):
        assert text in card, text


def test_bootstrap_estimates_match_sklearn_and_bracket_the_cis():
    rng = np.random.default_rng(3)
    preds = _predictions(rng, 30)
    y, p = preds["lesion"].to_numpy(), np.stack(preds["lesion_probs"].to_numpy())
    s, sp = preds["site"].to_numpy(), np.stack(preds["site_probs"].to_numpy())
    ci = bootstrap_ci(preds, n_boot=300)["metrics"]
    expected = {f"test/{k}": v for k, v in {**lesion_metrics(y, p, LESION), **site_metrics(s, sp)}.items()}
    for key in ("test/lesion_bacc", "test/lesion_acc", "test/lesion_auc", "test/site_acc", "test/site_bacc"):
        assert ci[key]["estimate"] == pytest.approx(expected[key]), key
        assert ci[key]["low"] <= ci[key]["estimate"] <= ci[key]["high"], key
        assert ci[key]["high"] - ci[key]["low"] > 0, key


def test_bootstrap_resamples_lesions_when_the_predictions_name_them():
    preds = _predictions(np.random.default_rng(4), 30)
    per_image = bootstrap_ci(preds, n_boot=300)
    assert (per_image["unit"], per_image["n_units"]) == ("image", 30)  # predictions without group ids
    # each image three times under its own lesion id: the same lesions, so the same intervals
    once = bootstrap_ci(preds.assign(group_id=preds["image_id"]), n_boot=300)
    tripled = preds.loc[preds.index.repeat(3)].assign(group_id=lambda f: f["image_id"]).reset_index(drop=True)
    grouped = bootstrap_ci(tripled, n_boot=300)
    assert (grouped["unit"], grouped["n_units"], grouped["n_images"]) == ("lesion group", 30, 90)
    for key, value in once["metrics"].items():
        assert grouped["metrics"][key] == pytest.approx(value), key


def test_torchscript_matches_eager_and_probabilities_sum_to_one(exported):
    _, out, images = exported
    eager, traced = load_bundle(out, "safetensors"), load_bundle(out, "torchscript")
    batch = torch.stack([eager.preprocess(p) for p in images])
    with torch.no_grad():
        (le, se), (lt, st) = eager.model(batch), traced.model(batch)
    assert (le - lt).abs().max() < 1e-5 and (se - st).abs().max() < 1e-5
    rows_e = predict_images(eager, images)
    rows_t = predict_images(traced, images, batch_size=3)  # batches of 3 and 2: the trace used 2
    assert [r["path"] for r in rows_e] == [str(p) for p in images]
    for re_, rt in zip(rows_e, rows_t, strict=True):
        for task in ("lesion_probs", "site_probs"):
            assert abs(sum(re_[task].values()) - 1) < 1e-5 and abs(sum(rt[task].values()) - 1) < 1e-5
            assert max(abs(re_[task][k] - rt[task][k]) for k in re_[task]) < 1e-5
        assert re_["lesion"] == max(re_["lesion_probs"], key=re_["lesion_probs"].get)
        assert re_["site"] in SITE and re_["site_prob"] == re_["site_probs"][re_["site"]]


def test_preprocessing_equals_validation_loader(exported, tmp_path):
    """The predict input of an image == what ShardDataset (the validation loader) yields after prepare."""
    _, out, images = exported
    bundle = load_bundle(out)
    shard = tmp_path / "shards" / "val-0.parquet"
    shard.parent.mkdir()
    blobs = [prepare_image(p, SIZE, 90) for p in images]  # what `skintune prepare` stores
    ids, zeros = [p.stem for p in images], [0] * len(blobs)
    pq.write_table(pa.table({"image_id": ids, "group_id": ids, "image": blobs, "lesion": zeros, "site": zeros}), shard)
    (tmp_path / "dataset.json").write_text(json.dumps({"shards": [{"file": "shards/val-0.parquet", "split": "val"}]}))
    norm = data_config("test_efficientnet")
    ds = ShardDataset(tmp_path, "val", transform=build_transforms(SIZE, norm["mean"], norm["std"], train=False))
    for i, path in enumerate(images):
        assert torch.equal(bundle.preprocess(path), ds[i][0])


def test_predict_writes_csv_and_json(exported, tmp_path, capsys):
    _, out, images = exported
    rows = run_predict(out, images, tmp_path / "p.csv")
    with (tmp_path / "p.csv").open() as fh:
        reader = csv.DictReader(fh)
        table = list(reader)
    assert reader.fieldnames == [
        "path",
        "lesion",
        "lesion_prob",
        "site",
        "site_prob",
        *[f"lesion:{c}" for c in LESION],
        *[f"site:{c}" for c in SITE],
    ]
    assert len(table) == len(images) and [r["path"] for r in table] == [str(p) for p in images]
    for r in table:
        assert sum(float(r[f"lesion:{c}"]) for c in LESION) == pytest.approx(1, abs=1e-5)
        assert float(r["lesion_prob"]) == max(float(r[f"lesion:{c}"]) for c in LESION)
    run_predict(out, images, tmp_path / "p.json", backend="torchscript")
    data = json.loads((tmp_path / "p.json").read_text())
    assert len(data) == len(images) and data[0].keys() == rows[0].keys()
    run_predict(out, images[:2])
    printed = capsys.readouterr().out
    assert str(images[0]) in printed and "lesion" in printed
    with pytest.raises(UserError, match=r"\.csv or \.json"):
        write_predictions(rows, load_bundle(out), tmp_path / "p.txt")


def test_predict_bad_inputs(exported, tmp_path):
    _, out, images = exported
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    bundle = load_bundle(out)
    with pytest.raises(UserError, match="broken.jpg"):
        predict_images(bundle, [images[0], corrupt])
    with pytest.raises(UserError, match="missing.png"):
        predict_images(bundle, [tmp_path / "missing.png"])
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((out / "config.json").read_text())
    with pytest.raises(UserError, match="labels.json"):
        load_bundle(partial)
    with pytest.raises(UserError, match="no such model folder"):
        load_bundle(tmp_path / "nowhere")


def test_export_errors_and_overwrite(tmp_path):
    exp = make_layout(tmp_path, seeds=(0, 1), ci=False)
    with pytest.raises(UserError, match=r"available seeds: 0, 1"):
        export_model(str(exp), str(tmp_path / "x"), seed=5)
    out = export_model(str(exp), None, seed=0, n_boot=20)  # default: <experiment>/export
    assert out == exp / "export" and json.loads((out / "config.json").read_text())["seed"] == 0
    assert "mtl_vs_single_task" not in json.loads((out / "metrics.json").read_text())
    export_model(str(exp), str(out), n_boot=20)  # replacing a previous export is fine
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a skintune export"):
        export_model(str(exp), str(foreign))
    assert (foreign / "notes.txt").read_text() == "mine"


def test_export_before_retrain(tmp_path):
    exp = tmp_path / "results" / "fresh"
    exp.mkdir(parents=True)
    (exp / "experiment.yaml").write_text(yaml.safe_dump({"name": "fresh"}))
    with pytest.raises(UserError, match=r"no retrained model under .*skintune retrain --experiment fresh"):
        export_model(str(exp), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_export_takes_defaults_from_the_typed_configs(tmp_path):
    """A setting the checkpoint's config leaves out is TrainConfig's default (dropout 0.2), not export's own; a
    typo in experiment.yaml is refused the way `skintune tune` refuses it."""
    exp = make_layout(tmp_path, ci=False)
    meta_path = exp / "retrain/mtl/seed_1/checkpoint/meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["dropout"]
    meta_path.write_text(json.dumps(meta))
    out = export_model(str(exp), str(tmp_path / "bundle"), n_boot=20)
    config = json.loads((out / "config.json").read_text())
    assert config["dropout"] == TrainConfig().dropout == 0.2
    assert config["train_config"] == parse_train_config(meta["config"]).model_dump()
    assert "dropout 0.2" in (out / "MODEL_CARD.md").read_text()
    assert load_bundle(out).config.dropout == 0.2
    experiment = yaml.safe_load((exp / "experiment.yaml").read_text())
    experiment["tune"]["metrc"] = "val/loss"
    (exp / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    with pytest.raises(UserError, match=r"experiment\.yaml: tune\.metrc: unknown key \(did you mean 'metric'\?\)"):
        export_model(str(exp), str(tmp_path / "bundle"), n_boot=20)


def test_bundles_written_before_the_typed_config_still_load(exported, tmp_path):
    """config.json as earlier exports wrote it (the checkpoint's raw config under train_config) loads and predicts
    the same; so does one without resize_size / jpeg_quality, which predict has always defaulted."""
    _, out, images = exported
    current = predict_images(load_bundle(out), images)
    new_fields = ("inputs", "metadata_inputs", "fusion_width", "metadata_sites", "temperature")  # added since
    for name, drop in (("old", new_fields), ("older", ("resize_size", "jpeg_quality", *new_fields))):
        old = tmp_path / name
        old.mkdir()
        for f in out.iterdir():
            (old / f.name).write_bytes(f.read_bytes())
        config = json.loads((out / "config.json").read_text())
        config["train_config"] = {"backbone": "test_efficientnet", "dropout": 0.1, "multitask": True, "seed": 1}
        (old / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in drop}))
        bundle = load_bundle(old)
        assert bundle.config.resize_size == SIZE and bundle.config.jpeg_quality == 90
        assert bundle.metadata_inputs == () and bundle.config.metadata_sites == []  # image only, as they were
        assert predict_images(bundle, images) == current


def test_bad_bundle_config_names_the_file_and_field(exported, tmp_path):
    _, out, _ = exported
    for name, edit, match in (
        ("config.json", lambda c: {**c, "image_size": "large"}, r"config\.json: image_size: .*re-export"),
        ("config.json", lambda c: {**c, "format": "other"}, r"config\.json: not a skintune export config"),
        ("labels.json", lambda c: {"site": c["site"]}, r"labels\.json: lesion: Field required.*re-export"),
    ):
        bad = tmp_path / f"bad-{len(list(tmp_path.iterdir()))}"
        bad.mkdir()
        for f in out.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        (bad / name).write_text(json.dumps(edit(json.loads((out / name).read_text()))))
        with pytest.raises(UserError, match=match):
            load_bundle(bad)


def test_export_without_a_validation_split_leaves_temperature_one(exported):
    _, out, _ = exported
    assert json.loads((out / "config.json").read_text())["temperature"] == 1.0
    cal = json.loads((out / "metrics.json").read_text())["calibration"]
    assert cal["temperature"] == 1.0 and not cal["fitted"] and "no validation split" in cal["reason"]
    assert "Not calibrated (temperature 1)" in (out / "MODEL_CARD.md").read_text()


def test_export_fits_the_temperature_on_the_validation_split(tmp_path):
    exp = make_layout(tmp_path, seeds=(0,), ci=False, val_images=24)
    out = export_model(str(exp), str(tmp_path / "bundle"), n_boot=20)
    config, metrics = json.loads((out / "config.json").read_text()), json.loads((out / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["fitted"] and cal["temperature"] == config["temperature"] != 1.0 and cal["ece_bins"] == 15
    for split, images in (("val", 24), ("test", 40)):  # test: the seed's predictions.parquet, held out
        row = cal[split]
        assert row["images"] == images
        assert set(row) == {"images", "nll_before", "nll_after", "ece_before", "ece_after"}
        assert all(np.isfinite(v) for v in row.values())
    assert cal["val"]["nll_after"] <= cal["val"]["nll_before"] + 1e-12  # fitted there: never worse
    # the temperature is the validation split's: the fit over the val images' logits, as predict computes them
    bundle = load_bundle(out)
    ds = ShardDataset(
        exp / "prepared", "val", build_transforms(SIZE, bundle.config.mean, bundle.config.std, train=False)
    )
    with torch.no_grad():
        logits = bundle.model(torch.stack([ds[i][0] for i in range(len(ds))]))[0].double().numpy()
    assert fit_temperature(logits, ds.lesion) == pytest.approx(cal["temperature"], rel=1e-6)
    assert calibration_numbers(logits, ds.lesion, cal["temperature"]) == pytest.approx(cal["val"])
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Calibration" in card and f"T = {cal['temperature']:.3f}" in card and "test (held out)" in card


def test_predict_divides_lesion_logits_by_the_temperature(exported, tmp_path):
    _, out, images = exported
    hot = tmp_path / "hot"
    shutil.copytree(out, hot)
    config = json.loads((hot / "config.json").read_text())
    (hot / "config.json").write_text(json.dumps({**config, "temperature": 2.5}))
    for backend in ("safetensors", "torchscript"):
        bundle = load_bundle(hot, backend)
        batch = torch.stack([bundle.preprocess(p) for p in images])
        with torch.no_grad():
            lesion_logits, site_logits = bundle.model(batch)
        want_lesion = torch.softmax(lesion_logits.double() / 2.5, 1)
        want_site = torch.softmax(site_logits.double(), 1)  # the site head is not rescaled
        rows = predict_images(bundle, images)
        for i, row in enumerate(rows):
            assert [row["lesion_probs"][c] for c in LESION] == pytest.approx(want_lesion[i].tolist(), abs=1e-6)
            assert [row["site_probs"][c] for c in SITE] == pytest.approx(want_site[i].tolist(), abs=1e-6)
        tta = predict_images(bundle, images, tta=1)
        assert tta == rows


def test_predict_format_isic_columns_and_order(exported, tmp_path, capsys):
    _, out, images = exported
    rows = run_predict(out, images, tmp_path / "sub.csv", fmt="isic")
    frame = pd.read_csv(tmp_path / "sub.csv")
    assert list(frame.columns) == ["image", "MEL", "NV", "BCC", "UNK"]
    assert list(frame["image"]) == [p.stem for p in images] and (frame["UNK"] == 0.0).all()
    assert frame["BCC"].tolist() == pytest.approx([r["lesion_probs"]["BCC"] for r in rows])
    # a model whose classes come in another order: columns still in the ISIC 2019 order, each its class's own
    shuffled = tmp_path / "shuffled"
    shutil.copytree(out, shuffled)
    (shuffled / "labels.json").write_text(json.dumps({"lesion": ["BCC", "NV", "MEL"], "site": SITE}))
    rows = run_predict(shuffled, images, tmp_path / "sub2.csv", fmt="isic")
    frame = pd.read_csv(tmp_path / "sub2.csv")
    assert list(frame.columns) == ["image", "MEL", "NV", "BCC", "UNK"]
    for c in ("MEL", "NV", "BCC"):
        assert frame[c].tolist() == pytest.approx([r["lesion_probs"][c] for r in rows])
    assert frame[["MEL", "NV", "BCC"]].sum(axis=1).to_numpy() == pytest.approx(np.ones(len(images)))
    capsys.readouterr()
    run_predict(out, images[:2], fmt="isic")  # no --output: the CSV on stdout
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "image,MEL,NV,BCC,UNK" and printed[1].startswith(images[0].stem + ",") and len(printed) == 3
    with pytest.raises(UserError, match=r"--format isic writes a CSV"):
        run_predict(out, images, tmp_path / "sub.json", fmt="isic")
    twin = tmp_path / "twin" / images[0].name
    twin.parent.mkdir()
    twin.write_bytes(images[0].read_bytes())
    with pytest.raises(UserError, match=r"both image 'a'"):
        run_predict(out, [images[0], twin], fmt="isic")


def test_predict_tta(exported):
    _, out, images = exported
    bundle = load_bundle(out)
    plain, once, eight = (predict_images(bundle, images, tta=n) for n in (1, 1, 8))
    assert plain == once
    for row8 in eight:
        assert sum(row8["lesion_probs"].values()) == pytest.approx(1, abs=1e-5)
        assert sum(row8["site_probs"].values()) == pytest.approx(1, abs=1e-5)
    pairs = zip(plain, eight, strict=True)
    assert max(abs(a["lesion_probs"][c] - b["lesion_probs"][c]) for a, b in pairs for c in LESION) > 0
    with pytest.raises(UserError, match="tta=9"):
        predict_images(bundle, images, tta=9)
