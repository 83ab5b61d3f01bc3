"""The bad-input corpus (docs/design.md, "Bad input"): every case runs the real CLI, ``tuner.cli.main``.

Each bad case must end with exit code 2 and one line ``skintune: error: ...`` that names the file (and the
line, key or parameter) and says what to do, with no traceback; odd-but-valid images (grayscale, 16-bit, CMYK)
must prepare with exit code 0 into RGB. A few cases also run as ``python -m tuner.cli`` to prove the real exit
code, and with ``--debug`` to prove the traceback is one flag away. Nothing here starts Ray (see conftest).

A case is a function ``case_<id>(corpus)`` that writes its input and returns ``(argv, expected substrings)``,
or ``(argv, expected, after)`` where ``after(corpus)`` checks files it left behind.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from trainables.errors import UserError
from tuner.cli import main

SPACES = Path(__file__).resolve().parent / "cases" / "spaces"
GT, META = "ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"
BAD: dict[str, Callable] = {}
GOOD: dict[str, Callable] = {}


def bad(fn: Callable) -> Callable:
    BAD[fn.__name__.removeprefix("case_")] = fn
    return fn


def good(fn: Callable) -> Callable:
    GOOD[fn.__name__.removeprefix("case_")] = fn
    return fn


# data: the dataset format and its CSVs ------------------------------------------------------------------------
@bad
def case_unknown_format(c):
    c.isic2019()
    return c.prepare_argv(fmt="isic2018"), ["unknown dataset format 'isic2018'", "did you mean 'isic2019'?", "--format"]


@bad
def case_missing_csv_column(c):
    c.isic2019()
    header = "image,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"  # MEL dropped
    c.write_csv(GT, header, [f"{image},1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0" for image in c.ids()])
    return c.prepare_argv(), [GT, "missing column(s) 'MEL'", "the header has 'image', 'NV'", "rename the columns"]


@bad
def case_empty_csv(c):
    c.isic2019()
    (c.root / GT).write_bytes(b"")
    return c.prepare_argv(), [GT, "the file is empty", "expected a CSV with a header line"]


@bad
def case_header_only_csv(c):
    c.isic2019()
    c.write_csv(META, "image,age_approx,anatom_site_general,lesion_id,sex", [])
    return c.prepare_argv(), [META, "has a header but no rows", "one row per image"]


@bad
def case_site_outside_vocabulary(c):
    c.isic2019()
    c.edit_csv(META, 4, "head/neck", "head")
    expected = [f"{META} line 4 column 'anatom_site_general'", "unknown value 'head'", "'head/neck'", "fix the row"]
    return c.prepare_argv(), expected


@bad
def case_lesion_outside_vocabulary(c):
    c.isic2019()
    rows = [f"{image},{['MEL', 'NV'][i % 2]}," for i, image in enumerate(c.ids())]
    rows[3] = rows[3].replace(",NV,", ",BCC,")
    c.write_csv("labels.csv", "image,lesion,site", rows)
    options = ["file=labels.csv", "image_dir=ISIC_2019_Training_Input", "extension=.jpg", "lesion_classes=[MEL, NV]"]
    argv = c.prepare_argv(*[a for o in options for a in ("--option", o)], fmt="csv")
    return argv, ["labels.csv line 5 column 'lesion'", "unknown value 'BCC'", "allowed: 'MEL', 'NV'"]


@bad
def case_onehot_two_diagnoses(c):
    c.isic2019()
    c.edit_csv(GT, 3, "0.0,1.0,0.0", "1.0,1.0,0.0")  # ISIC_0000001: MEL and NV
    return c.prepare_argv(), [f"{GT} line 3", "several classes are marked 1 (MEL, NV)", "exactly one diagnosis"]


@bad
def case_duplicate_image_id(c):
    c.isic2019()
    c.edit_csv(GT, 6, "ISIC_0000004", "ISIC_0000001")
    return c.prepare_argv(), [GT, "'ISIC_0000001' is listed twice (lines 3 and 6)", "remove one of the rows"]


@bad
def case_image_absent(c):
    c.isic2019()
    c.image_path(c.ids()[3]).unlink()
    expected = [f"{GT} line 5 column 'image'", "image 'ISIC_0000003' not found", "put the images there"]
    return c.prepare_argv(), expected


# data: patient metadata (age, sex) ---------------------------------------------------------------------------------
@bad
def case_age_negative(c):
    c.isic2019()
    c.edit_csv(META, 4, ",55.0,", ",-3,")
    expected = [f"{META} line 4 column 'age_approx' (image 'ISIC_0000002')", "age '-3' is out of range (0 to 120"]
    return c.prepare_argv(), [*expected, "leave the cell empty where it is unknown"]


@bad
def case_age_300(c):
    c.isic2019()
    c.edit_csv(META, 9, ",55.0,", ",300,")
    return c.prepare_argv(), [f"{META} line 9 column 'age_approx' (image 'ISIC_0000007')", "age '300' is out of range"]


@bad
def case_sex_outside_vocabulary(c):
    c.isic2019()
    c.edit_csv(META, 3, ",female", ",unknwn")
    expected = [f"{META} line 3 column 'sex' (image 'ISIC_0000001')", "unknown sex value 'unknwn'", "'female', 'male'"]
    return c.prepare_argv(), [*expected, "fix the row"]


@bad
def case_csv_age_not_a_number(c):
    c.isic2019()
    rows = [f"{image},{['MEL', 'NV'][i % 2]},{['42', '', 'unknown', 'NaN'][i % 4]}" for i, image in enumerate(c.ids())]
    rows[5] = f"{c.ids()[5]},NV,4O"  # a letter O for a zero
    c.write_csv("labels.csv", "image,lesion,age", rows)
    options = ["file=labels.csv", "image_dir=ISIC_2019_Training_Input", "extension=.jpg", "site_column=null"]
    argv = c.prepare_argv(*[a for o in [*options, "age_column=age"] for a in ("--option", o)], fmt="csv")
    return argv, ["labels.csv line 7 column 'age' (image 'ISIC_0000005')", "age '4O' is not a number", "in years"]


@bad
def case_csv_without_image_column(c):
    c.isic2019()
    c.write_csv("labels.csv", "file,lesion,age,sex", [f"{image},NV,50,F" for image in c.ids()])
    options = ["file=labels.csv", "site_column=null", "age_column=age", "sex_column=sex"]
    argv = c.prepare_argv(*[a for o in options for a in ("--option", o)], fmt="csv")
    return argv, ["labels.csv: missing column(s) 'image'", "the header has 'file'", "csv options *_column to names"]


# data: image files ----------------------------------------------------------------------------------------------
def _bad_image_listed(image: str) -> Callable:
    def after(c) -> None:
        report = json.loads((c.out / "prepare_report.json").read_text())
        assert [b["image_id"] for b in report["bad_images"]] == [image]
        assert not (c.out / "dataset.json").exists()  # never a dataset that silently lacks the image

    return after


@bad
def case_truncated_jpeg(c):
    c.isic2019()
    data = c.image_path(c.ids()[4]).read_bytes()
    image, path = c.replace_image(4, data[: len(data) // 2])
    expected = [f"image '{image}' ({path})", "truncated", "prepare_report.json", "--skip-bad"]
    return c.prepare_argv(), expected, _bad_image_listed(image)


@bad
def case_not_an_image(c):
    c.isic2019()
    image, path = c.replace_image(5, b"<html><body>404 Not Found</body></html>\n")
    return (
        c.prepare_argv(),
        [f"image '{image}' ({path})", "cannot identify image file", "--skip-bad"],
        _bad_image_listed(image),
    )


@bad
def case_one_pixel_image(c):
    c.isic2019()
    image, path = c.replace_image(6, img=Image.new("RGB", (1, 1), (200, 100, 50)))
    expected = [f"image '{image}' ({path})", "1x1 pixels", "at least 16 px", "--skip-bad"]
    return c.prepare_argv(), expected, _bad_image_listed(image)


# data: odd but valid images (exit 0, RGB out) -----------------------------------------------------------------
@good
def case_grayscale_jpeg(c):
    c.isic2019()
    gray = Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 32), dtype=np.uint8), "L")
    return (*c.replace_image(1, img=gray), {"L"})


@good
def case_sixteen_bit_png(c):
    c.isic2019()
    deep = Image.fromarray(np.random.default_rng(2).integers(0, 65535, (24, 32), dtype=np.uint16))
    assert deep.mode.startswith("I;16")
    return (*c.replace_image(2, img=deep, suffix=".png"), {"I;16", "I"})


@good
def case_cmyk_jpeg(c):
    c.isic2019()
    cmyk = Image.fromarray(np.random.default_rng(3).integers(0, 255, (24, 32, 3), dtype=np.uint8)).convert("CMYK")
    return (*c.replace_image(3, img=cmyk), {"CMYK"})


# experiment YAML --------------------------------------------------------------------------------------------------
def _train(c, path: Path) -> list[str]:
    return ["train", "--config", str(path), "--storage", str(c.storage)]


@bad
def case_yaml_typo_key(c):
    path = c.experiment({"tune": {"num_smaples": 3}})
    return _train(c, path), [str(path), "tune.num_smaples: unknown key (did you mean 'num_samples'?)"]


@bad
def case_yaml_typo_section(c):
    path = c.experiment({"trian": {"epochs": 3}})
    return _train(c, path), [str(path), "trian: unknown key (did you mean 'train'?)"]


@bad
def case_yaml_wrong_type(c):
    path = c.experiment({"train": {"batch_size": "big"}})
    return _train(c, path), [str(path), "train.batch_size: Input should be a valid integer", "(got 'big')"]


@bad
def case_yaml_negative_epochs(c):
    path = c.experiment({"train": {"epochs": -3}})
    return _train(c, path), [str(path), "train.epochs: Input should be greater than or equal to 1 (got -3)"]


@bad
def case_yaml_syntax_error(c):
    path = c.tmp / "exp.yaml"
    path.write_text("name: corpus\ndata: {root: [unclosed\n")
    return _train(c, path), [f"{path} line 3", "not valid YAML"]


@bad
def case_unknown_backbone(c):
    path = c.experiment({"train": {"backbone": "resnt18"}})
    expected = [str(path), "train.backbone: unknown backbone 'resnt18'", "did you mean 'resnet18'?", "list_models"]
    return _train(c, path), expected


# search spaces (`skintune tune` validates the space before preparing data or starting Ray) ------------------------
def _tune(c, space: str) -> list[str]:
    path = c.experiment(search_space=str(SPACES / space) if space.endswith(".yaml") else space)
    return ["tune", "--config", str(path), "--storage", str(c.storage)]


@bad
def case_space_low_gt_high(c):
    return _tune(c, "low_gt_high.yaml"), ["low_gt_high.yaml", "params.w_site: low must be <= high", "low=2.0, high=0.5"]


@bad
def case_space_log_low_zero(c):
    return _tune(c, "log_low_zero.yaml"), ["log_low_zero.yaml", "params.lr_head: log=true needs low > 0 (got low=0.0)"]


@bad
def case_space_empty_choices(c):
    return _tune(c, "empty_choices.yaml"), [
        "empty_choices.yaml",
        "params.lesion_loss.choices: must be a non-empty list",
    ]


@bad
def case_space_condition_unknown_param(c):
    expected = ["when_unknown_param.yaml", "params.focal_gamma.when.lesion_los: unknown parameter 'lesion_los'"]
    return _tune(c, "when_unknown_param.yaml"), [*expected, "did you mean 'lesion_loss'?"]


@bad
def case_space_unknown_backbone(c):
    expected = [
        "unknown_backbone.yaml",
        "params.backbone.value: unknown backbone 'resnt18'",
        "did you mean 'resnet18'?",
    ]
    return _tune(c, "unknown_backbone.yaml"), expected


@bad
def case_space_unknown_backbone_choice(c):
    expected = ["unknown_backbone_choice.yaml", "params.backbone.choices[1]: unknown backbone 'tf_efficientnet_lit0'"]
    return _tune(c, "unknown_backbone_choice.yaml"), [*expected, "did you mean 'tf_efficientnet_lite0'?"]


@bad
def case_space_unknown_name(c):
    return _tune(c, "mlt"), [
        "search space 'mlt': no such file",
        "shipped spaces: demo, meta, mtl",
        "did you mean 'mtl'?",
        "set search_space",
    ]


# cluster ---------------------------------------------------------------------------------------------------------
@bad
def case_cluster_yaml_typo(c):
    shipped = (Path(__file__).resolve().parents[2] / "cluster.yaml").read_text()
    assert "\nmax_workers:" in shipped
    path = c.tmp / "cluster.yaml"
    path.write_text(shipped.replace("\nmax_workers:", "\nmax_worker:", 1))
    return ["check-cluster", str(path)], [str(path), "unknown key 'max_worker'", "did you mean 'max_workers'?"]


@bad
def case_submit_nothing(c):
    return ["submit", "--address", "http://127.0.0.1:9", "--"], ["nothing to submit", "-- tune --config"]


# experiment state -------------------------------------------------------------------------------------------------
@bad
def case_resume_missing_experiment(c):
    path = c.experiment()
    argv = ["tune", "--config", str(path), "--storage", str(c.storage), "--resume"]
    return argv, ["--resume: no experiment to resume at", str(c.storage / "corpus" / "tune"), "run without --resume"]


@bad
def case_export_before_retrain(c):
    c.resolved_experiment()
    argv = ["export", "--storage", str(c.storage), "--experiment", "corpus"]
    expected = [f"no retrained model under {c.storage / 'corpus' / 'retrain' / 'mtl'}", "skintune retrain"]
    return argv, [*expected, f"--experiment corpus --storage {c.storage}"]


# predict with metadata inputs --------------------------------------------------------------------------------------
def _meta_bundle(c) -> tuple[str, list[str]]:
    """A bundle of a tiny network with site, age and sex as inputs (as `skintune export` writes it, minus the
    TorchScript file, metrics and card, which predict's default backend does not read) and two release images."""
    from safetensors.torch import save_model

    from trainables.model import build_model
    from tuner.bundle import BundleConfig

    c.isic2019()
    sites = ["anterior torso", "head/neck"]
    model = build_model("test_efficientnet", False, 2, 2, 0.1, metadata_inputs=("site", "age", "sex"), num_sites=2)
    folder = c.tmp / "bundle"
    folder.mkdir()
    save_model(model, str(folder / "model.safetensors"))
    fields = {"metadata_inputs": ["site", "age", "sex"], "fusion_width": 64, "metadata_sites": sites}
    config = BundleConfig(
        backbone="test_efficientnet", multitask=True, num_lesion_classes=2, num_site_classes=2, dropout=0.1,
        image_size=16, mean=[0.5] * 3, std=[0.5] * 3, **fields,
    )  # fmt: skip
    (folder / "config.json").write_text(config.model_dump_json())
    (folder / "labels.json").write_text(json.dumps({"lesion": ["MEL", "NV"], "site": sites}))
    return str(folder), [str(c.image_path(image)) for image in c.ids(2)]


def _predict_meta(c, csv_text: str | None = None, *flags: str) -> list[str]:
    model, images = _meta_bundle(c)
    argv = ["predict", "--model", model, *images, *flags]
    if csv_text is not None:
        (c.tmp / "patients.csv").write_text(csv_text)
        argv += ["--metadata", str(c.tmp / "patients.csv")]
    return argv


@bad
def case_predict_metadata_negative_age(c):
    argv = _predict_meta(c, "image,site,age,sex\nISIC_0000000.jpg,head/neck,-3,male\nISIC_0000001,,40,\n")
    return argv, ["patients.csv line 2 column 'age'", "(image 'ISIC_0000000.jpg')", "age '-3' is out of range"]


@bad
def case_predict_metadata_age_300_flag(c):
    return _predict_meta(c, None, "--age", "300"), ["--age '300'", "out of range (0 to 120 years)", "leave out --age"]


@bad
def case_predict_metadata_unknown_sex(c):
    argv = _predict_meta(c, "image,sex\nISIC_0000000,female\nISIC_0000001,divers\n")
    return argv, ["patients.csv line 3 column 'sex'", "unknown sex value 'divers'", "'female', 'male'"]


@bad
def case_predict_metadata_unknown_site(c):
    argv = _predict_meta(c, None, "--site", "torso")
    return argv, ["--site 'torso': unknown value 'torso'", "allowed: 'anterior torso', 'head/neck'"]


@bad
def case_predict_metadata_no_image_column(c):
    argv = _predict_meta(c, "file,age\nISIC_0000000.jpg,40\n")
    return argv, ["patients.csv: missing column(s) 'image'", "the header has 'file', 'age'", "'image' column"]


@bad
def case_predict_metadata_image_not_in_csv(c):
    argv = _predict_meta(c, "image,age\nISIC_0000000.jpg,40\n")
    return argv, ["patients.csv column 'image': no row for image 'ISIC_0000001.jpg'", "add a line 'ISIC_0000001.jpg"]


# evaluate (an exported model over another dataset): refused before anything is prepared or written ----------------
def _evaluate(c, *flags: str, model: str | None = None, fmt: str = "isic2019", root: Path | None = None) -> list[str]:
    """``skintune evaluate`` of the corpus' metadata bundle (lesion classes MEL, NV) over the corpus' release."""
    if model is None:
        model, _ = _meta_bundle(c)
    root = c.root if root is None else root
    return ["evaluate", "--model", model, "--format", fmt, "--root", str(root), "--out", str(c.tmp / "eval"), *flags]


def _nothing_written(c) -> None:
    assert not (c.tmp / "eval").exists() and not any(c.tmp.rglob("dataset.json"))


@bad
def case_evaluate_unknown_format(c):
    expected = ["unknown dataset format 'ham1000'", "did you mean 'ham10000'?", "set --format"]
    return _evaluate(c, fmt="ham1000"), expected, _nothing_written


@bad
def case_evaluate_no_class_maps(c):
    model, _ = _meta_bundle(c)
    other = c.tmp / "other"
    other.mkdir()
    (other / "labels.csv").write_text("image,lesion\nwart1,wart\ncyst1,cyst\nwart2,wart\n")
    for i, image in enumerate(["wart1", "cyst1", "wart2"]):
        Image.new("RGB", (32, 24), (40 * i, 90, 120)).save(other / f"{image}.jpg")
    options = ["file=labels.csv", "extension=.jpg", "site_column=null"]
    argv = _evaluate(c, *[a for o in options for a in ("--option", o)], model=model, fmt="csv", root=other)
    expected = [f"{other}: no csv class maps to a class of the model (MEL, NV)", "cyst: no ISIC 2019 equivalent"]
    expected += ["wart: no ISIC 2019 equivalent", "a dataset that shares classes with the model"]
    return argv, expected, _nothing_written


@bad
def case_evaluate_incomplete_export(c):
    model, _ = _meta_bundle(c)
    Path(model, "model.safetensors").unlink()
    expected = [f"--model {model} is not a complete skintune export", "model.safetensors missing", "skintune export"]
    return _evaluate(c, model=model), expected, _nothing_written


@bad
def case_evaluate_tta_9(c):
    expected = ["--tta=9", "from 1 (no TTA) to 8", "pass --tta 1 to --tta 8"]
    return _evaluate(c, "--tta", "9"), expected, _nothing_written


@bad
def case_evaluate_root_missing(c):
    model, _ = _meta_bundle(c)
    root = c.tmp / "no-such-release"
    expected = [f"--root {root}: no such folder", "point --root at the unpacked isic2019 release"]
    return _evaluate(c, model=model, root=root), expected, _nothing_written


@bad
def case_evaluate_n_boot_0(c):
    expected = ["--n-boot 0: must be a whole number >= 1", "leave --n-boot out for 1000"]
    return _evaluate(c, "--n-boot", "0"), expected, _nothing_written


# the tests --------------------------------------------------------------------------------------------------------
def error_line(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; it must exit 2 with one ``skintune: error:`` line, the last on stderr."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("skintune: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]  # one line: nothing after it
    return errors[0]


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_clear_line(name: str, corpus, capsys) -> None:
    argv, expected, *after = BAD[name](corpus)
    err = error_line(capsys, argv)
    missing = [text for text in expected if text not in err]
    assert not missing, f"{missing} not in: {err}"
    for check in after:
        check(corpus)


@pytest.mark.parametrize("name", list(GOOD))
def test_odd_but_valid_image_prepares_as_rgb(name: str, corpus, capsys) -> None:
    image, path, modes = GOOD[name](corpus)
    with Image.open(path) as source:
        assert source.mode in modes  # the fixture really is the odd kind of image
    assert main(corpus.prepare_argv()) == 0, capsys.readouterr().err[-2000:]
    info = json.loads((corpus.out / "dataset.json").read_text())
    assert info["images"] == 10 and info["bad_images"] == []
    rows = pq.read_table([corpus.out / s["file"] for s in info["shards"]]).to_pandas()
    for data in rows["image"]:
        with Image.open(io.BytesIO(data)) as img:
            assert img.mode == "RGB" and min(img.size) == 16
    assert image in set(rows["image_id"])


def test_skip_bad_leaves_the_image_out_but_lists_it(corpus, capsys) -> None:
    argv, _, _ = case_truncated_jpeg(corpus)
    assert main([*argv, "--skip-bad"]) == 0, capsys.readouterr().err[-2000:]
    info = json.loads((corpus.out / "dataset.json").read_text())
    assert info["images"] == 9 and [b["image_id"] for b in info["bad_images"]] == ["ISIC_0000004"]


def test_the_corpus_covers_the_issue() -> None:
    assert len(BAD) + len(GOOD) >= 22


@pytest.mark.parametrize("name", ["unknown_format", "yaml_typo_key", "space_low_gt_high", "truncated_jpeg"])
def test_debug_shows_the_traceback(name: str, corpus) -> None:
    argv, expected, *_ = BAD[name](corpus)
    with pytest.raises(UserError) as info:
        main(["--debug", *argv])
    assert expected[0] in str(info.value) and info.traceback  # the exception itself, with its traceback


@pytest.mark.parametrize("name", ["unknown_format", "yaml_typo_key", "truncated_jpeg", "evaluate_incomplete_export"])
def test_console_exit_code_is_2_without_traceback(name: str, corpus, cli_subprocess) -> None:
    argv, expected, *_ = BAD[name](corpus)
    run = cli_subprocess(*argv)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and run.stderr.strip().splitlines()[-1].startswith("skintune: error: ")
    assert all(text in run.stderr for text in expected)


def test_console_debug_prints_the_traceback(corpus, cli_subprocess) -> None:
    argv, _, *_ = case_yaml_typo_key(corpus)
    run = cli_subprocess("--debug", *argv)
    assert run.returncode == 1 and "Traceback" in run.stderr and "UserError" in run.stderr
