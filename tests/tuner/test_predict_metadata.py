"""Export and predict of a model with metadata inputs (issue 16): the two-input TorchScript trace, metadata read from
a CSV or from flags, the missing-value path, and bad metadata refused in one line with exit code 2.

The bundles come from :func:`tests.tuner.test_export.make_layout`: a real retrain layout (real timm test network
with the metadata branch, checkpoint, metrics, dataset.json) exported by the real ``export_model``; no Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.tuner.test_export import LESION, SITE, make_images, make_layout
from trainables.metadata import RAW_FIELDS, all_missing, blank_metadata
from tuner.cli import main
from tuner.export import export_model
from tuner.predict import (
    MetadataSource,
    load_bundle,
    predict_images,
    read_metadata,
    run_predict,
)

FIELDS = ("site", "age", "sex")


@pytest.fixture(scope="module")
def meta_export(tmp_path_factory):
    """A multi-task bundle with site, age and sex as inputs, a single-task one with age and sex, and images."""
    base = tmp_path_factory.mktemp("meta-export")
    full = export_model(str(make_layout(base / "full", metadata_inputs=FIELDS)), str(base / "full-bundle"), n_boot=20)
    single = make_layout(base / "single", metadata_inputs=("sex", "site"), multitask=False)
    single_out = export_model(str(single), str(base / "single-bundle"), n_boot=20)
    return full, single_out, make_images(base / "images")


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_export_records_the_metadata_inputs(meta_export):
    full, single, _ = meta_export
    config = json.loads((full / "config.json").read_text())
    assert config["metadata_inputs"] == list(FIELDS) and config["fusion_width"] == 8
    assert config["metadata_sites"] == SITE and "meta [B, 3]" in config["inputs"]
    assert config["train_config"]["metadata_inputs"] == list(FIELDS)
    config = json.loads((single / "config.json").read_text())  # single-task: no site head, the site as an input
    assert config["metadata_inputs"] == ["site", "sex"] and config["metadata_sites"] == SITE
    assert json.loads((single / "labels.json").read_text()) == {"lesion": LESION, "site": []}
    assert load_bundle(single).metadata_inputs == ("site", "sex")


@pytest.mark.parametrize("which", [0, 1])
def test_torchscript_matches_eager_with_metadata(meta_export, which):
    out, images = meta_export[which], meta_export[2]
    eager, traced = load_bundle(out, "safetensors"), load_bundle(out, "torchscript")
    batch = torch.stack([eager.preprocess(p) for p in images])
    nan = float("nan")
    codes = torch.tensor([[0, 40, 1], [1, 75, 0], [-1, nan, -1], [1, nan, 1], [-1, 18, -1]], dtype=torch.float32)
    with torch.no_grad():
        (le, se), (lt, st) = eager.model(batch, codes), traced.model(batch, codes)
        # the trace's batch (2) and metadata are not baked in: other values give other outputs, also in TorchScript
        other, _ = traced.model(batch, codes.flip(0))
    assert (le - lt).abs().max() < 1e-5
    assert (se - st).abs().max() < 1e-5 if se is not None else st.shape == (len(images), 0)  # single-task trace
    assert (other - lt).abs().max() > 1e-4
    meta = codes.numpy()
    rows_e, rows_t = predict_images(eager, images, meta=meta), predict_images(traced, images, batch_size=3, meta=meta)
    for re_, rt in zip(rows_e, rows_t, strict=True):
        assert max(abs(re_["lesion_probs"][k] - rt["lesion_probs"][k]) for k in LESION) < 1e-5
        assert abs(sum(rt["lesion_probs"].values()) - 1) < 1e-5
        assert re_["metadata"] == rt["metadata"]


def test_metadata_changes_the_prediction_and_missing_is_the_blanked_path(meta_export, tmp_path):
    out, _, images = meta_export
    bundle = load_bundle(out)
    young = read_metadata(bundle, images, MetadataSource(site="anterior torso", age="25", sex="female"))
    old = read_metadata(bundle, images, MetadataSource(site="Posterior Torso", age="85", sex="M"))
    assert young[0].tolist() == [0.0, 25.0, 0.0] and old[0].tolist() == [1.0, 85.0, 1.0]  # any case, as adapters
    rows_y, rows_o = predict_images(bundle, images, meta=young), predict_images(bundle, images, meta=old)
    diff = max(
        abs(y["lesion_probs"][c] - o["lesion_probs"][c]) for y, o in zip(rows_y, rows_o, strict=True) for c in LESION
    )
    assert diff > 1e-4
    assert rows_y[0]["metadata"] == {"site": "anterior torso", "age": 25.0, "sex": "female"}
    # nothing given == every field blanked as training's metadata_dropout blanks it == the network's meta=None
    none = predict_images(bundle, images)
    blanked = blank_metadata(torch.from_numpy(old), FIELDS, 1.0, torch.Generator().manual_seed(0))
    via_blank = predict_images(bundle, images, meta=blanked.numpy())
    batch = torch.stack([bundle.preprocess(p) for p in images])
    with torch.no_grad():
        direct = torch.softmax(bundle.model(batch, all_missing(len(images)))[0].double(), 1)
        default = torch.softmax(bundle.model(batch)[0].double(), 1)
    assert torch.allclose(direct, default)
    for i, (a, b) in enumerate(zip(none, via_blank, strict=True)):
        assert a["lesion_probs"] == b["lesion_probs"]
        assert a["metadata"] == {"site": None, "age": None, "sex": None}
        assert [a["lesion_probs"][c] for c in LESION] == pytest.approx(direct[i].tolist(), abs=1e-9)
    # an empty cell in the CSV is the same missing value
    csv_path = _csv(tmp_path / "m.csv", "image,site,age,sex\n" + "".join(f"{p.name},,,\n" for p in images))
    from_csv = predict_images(bundle, images, meta=read_metadata(bundle, images, MetadataSource(csv=csv_path)))
    assert [r["lesion_probs"] for r in from_csv] == [r["lesion_probs"] for r in none]


def test_csv_is_matched_by_file_name_and_missing_fields_are_reported(meta_export, tmp_path, capsys):
    out, _, images = meta_export  # a.jpg b.png c.png d.jpeg e.png
    rows = [
        "image,age,sex,site,notes",
        "a.jpg,45,female,anterior torso,x",
        "sub/b.png,,male,posterior torso,",  # a path: its file name counts
        "c,70,unknown,anterior torso,",  # no suffix: matches c.png
        "d.jpeg,12,F,,",
        "e.png,33,m,posterior torso,",
        "other.jpg,50,male,,",  # rows for other images are fine
    ]
    path = _csv(tmp_path / "patients.csv", "\n".join(rows) + "\n")
    result = run_predict(out, images, tmp_path / "p.csv", metadata=MetadataSource(csv=path))
    assert [r["metadata"]["age"] for r in result] == [45.0, None, 70.0, 12.0, 33.0]
    assert [r["metadata"]["sex"] for r in result] == ["female", "male", None, "female", "male"]
    assert [r["metadata"]["site"] for r in result] == [
        "anterior torso",
        "posterior torso",
        "anterior torso",
        None,
        SITE[1],
    ]
    err = capsys.readouterr().err
    assert "age: 1 image(s) (b.png)" in err and "sex: 1 image(s) (c.png)" in err and "site: 1 image(s) (d.jpeg)" in err
    assert "missing-value path" in err
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert header[-3:] == ["input:site", "input:age", "input:sex"]
    # no metadata at all: one line says every field is missing and what the model then does
    run_predict(out, images[:2])
    err = capsys.readouterr().err
    assert "none was given" in err and "every field is missing for all 2 image(s)" in err and "--metadata" in err
    # a single-task model with site and sex as inputs: the age column is ignored, and said to be
    _, single, _ = meta_export
    run_predict(single, images, metadata=MetadataSource(csv=path))
    err = capsys.readouterr().err
    assert "column(s) age ignored" in err and "sex: 1 image(s) (c.png)" in err and "age:" not in err
    run_predict(single, images[:1], metadata=MetadataSource(age="40", sex="f"))
    assert "predict: --age ignored: the model does not take it" in capsys.readouterr().err


def test_image_only_model_warns_that_metadata_is_ignored(tmp_path, capsys):
    exp = make_layout(tmp_path, seeds=(0,), ci=False)
    out = export_model(str(exp), str(tmp_path / "bundle"), n_boot=20)
    images = make_images(tmp_path / "images")[:2]
    plain = predict_images(load_bundle(out), images)
    assert "metadata" not in plain[0]
    code = main(["predict", "--model", str(out), *map(str, images), "--age", "300", "--sex", "other"])
    captured = capsys.readouterr()
    assert code == 0
    warnings = [line for line in captured.err.splitlines() if "ignored" in line]
    assert len(warnings) == 1 and "--age --sex ignored: this model takes the image only" in warnings[0]
    assert run_predict(out, images, metadata=MetadataSource(age="40")) == plain


BAD_CSV = {
    "negative age": ("image,age\na.jpg,40\nb.png,-3\n", ["line 3 column 'age'", "(image 'b.png')", "'-3'", "0 to 120"]),
    "age 300": ("image,age,sex\na.jpg,300,f\n", ["line 2 column 'age'", "'300' is out of range", "age in years"]),
    "unknown sex": ("image,sex\na.jpg,unknwn\n", ["line 2 column 'sex'", "unknown sex value 'unknwn'", "'female'"]),
    "unknown site": ("image,site\na.jpg,torso\n", ["line 2 column 'site'", "'torso'", "'anterior torso'", "knows"]),
    "no image column": ("file,age\na.jpg,40\n", ["missing column(s) 'image'", "the header has 'file', 'age'"]),
    "image not listed": ("image,age\nzzz.jpg,40\n", ["no row for image 'a.jpg'", "add a line 'a.jpg,SITE,AGE,SEX'"]),
    "name twice": ("image,age\nx/a.jpg,40\ny/a.jpg,41\n", ["line 3 column 'image'", "also on line 2", "once"]),
}
BAD_FLAGS = {
    "age -3": (["--age", "-3"], ["--age '-3': age '-3' is out of range (0 to 120 years)", "leave out --age"]),
    "age 300": (["--age", "300"], ["--age '300': age '300' is out of range"]),
    "age text": (["--age", "old"], ["--age 'old': age 'old' is not a number"]),
    "sex": (["--sex", "x"], ["--sex 'x': unknown sex value 'x'; allowed: 'female', 'male'"]),
    "site": (["--site", "arm"], ["--site 'arm': unknown value 'arm'; allowed: 'anterior torso', 'posterior torso'"]),
}


def _error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err[-2000:]
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err and lines[-1].startswith("skintune: error: ")
    assert sum(line.startswith("skintune: error: ") for line in lines) == 1
    return lines[-1]


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_bad_metadata_csv_is_one_line_exit_2(meta_export, tmp_path, capsys, case):
    out, _, images = meta_export
    text, expected = BAD_CSV[case]
    path = _csv(tmp_path / "bad.csv", text)
    err = _error(capsys, ["predict", "--model", str(out), str(images[0]), str(images[1]), "--metadata", str(path)])
    assert str(path) in err
    assert not [e for e in expected if e not in err], err


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_metadata_flag_is_one_line_exit_2(meta_export, capsys, case):
    out, _, images = meta_export
    flags, expected = BAD_FLAGS[case]
    err = _error(capsys, ["predict", "--model", str(out), str(images[0]), *flags])
    assert not [e for e in expected if e not in err], err


def test_csv_and_flags_together_are_refused(meta_export, tmp_path, capsys):
    out, _, images = meta_export
    path = _csv(tmp_path / "m.csv", f"image,age\n{images[0].name},40\n")
    err = _error(capsys, ["predict", "--model", str(out), str(images[0]), "--metadata", str(path), "--sex", "f"])
    assert "--metadata" in err and "--sex" in err and "both given" in err


def test_raw_fields_order_is_the_encoding_order():
    assert RAW_FIELDS == FIELDS and bool(torch.isnan(all_missing(1)[0, 1]))


def test_cli_exports_a_metadata_arm_and_predicts_with_a_csv(tmp_path, capsys):
    """The whole path from the command line: retrain/mtl_meta/ -> `skintune export --arm mtl_meta` -> `skintune
    predict --metadata`; the default arm (mtl) is not there, and export says which arms are."""
    exp = make_layout(tmp_path, seeds=(0,), metadata_inputs=FIELDS, arm="mtl_meta")
    (exp / "report" / "arms.json").write_text(json.dumps({"mtl_meta": {"test/lesion_bacc": {"diff": 0.03}}}))
    resolved = yaml.safe_load((exp / "experiment.yaml").read_text())
    (exp / "experiment.yaml").write_text(yaml.safe_dump({**resolved, "storage": str(exp.parent)}))  # as tune writes
    storage = ["--storage", str(exp.parent), "--experiment", exp.name]
    assert main(["export", *storage]) == 2
    assert "retrained arm(s) mtl_meta: name one with --arm" in capsys.readouterr().err
    out = tmp_path / "meta-bundle"
    assert main(["export", *storage, "--arm", "mtl_meta", "--out", str(out)]) == 0, capsys.readouterr().err
    hint = capsys.readouterr().out.splitlines()[-1]  # the next step names the metadata the model takes
    assert hint.startswith("next: skintune predict") and "--metadata FILE.csv  # columns image, site, age, sex" in hint
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arm"] == "mtl_meta" and metrics["vs_single_task"] == {"test/lesion_bacc": {"diff": 0.03}}
    assert "mtl_vs_single_task" not in metrics and "arm `mtl_meta`" in (out / "MODEL_CARD.md").read_text()
    assert json.loads((out / "config.json").read_text())["metadata_inputs"] == list(FIELDS)
    images = make_images(tmp_path / "images")[:2]
    csv_path = _csv(tmp_path / "p.csv", f"image,site,age,sex\n{images[0].name},anterior torso,50,male\n")
    capsys.readouterr()
    argv = ["predict", "--model", str(out), *map(str, images), "--metadata", str(csv_path), "--output"]
    assert main([*argv, str(tmp_path / "p.json")]) == 2  # b.png has no row
    assert "no row for image 'b.png'" in capsys.readouterr().err
    (tmp_path / "p.csv").write_text(csv_path.read_text() + f"{images[1].name},,,\n")
    assert main([*argv, str(tmp_path / "p.json")]) == 0
    err = capsys.readouterr().err
    assert "metadata missing for site: 1 image(s) (b.png); age: 1 image(s) (b.png); sex: 1 image(s) (b.png)" in err
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rows[0]["metadata"] == {"site": "anterior torso", "age": 50.0, "sex": "male"}
    assert rows[1]["metadata"] == {"site": None, "age": None, "sex": None}
