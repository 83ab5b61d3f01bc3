"""The CLI's contract: --help with examples, and bad input as one line with exit code 2 (no traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuner.cli import build_parser, main

COMMANDS = ["synth", "prepare", "train", "tune", "retrain", "compare", "export", "predict", "evaluate", "demo"]
COMMANDS += ["tensorboard", "check-cluster", "submit", "jobs"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"skintune {command}" in text and "example" in text


def test_evaluate_help_says_what_it_reads_maps_and_writes(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for read in ("config.json", "labels.json", "model.safetensors", "$SKINTUNE_CACHE/evaluate/<key>"):
        assert read in text
    assert "HAM10000 akiec, bcc, bkl, df, mel, nv, vasc -> AK, BCC, BKL, DF, MEL, NV, VASC" in text
    assert "PAD-UFES-20 ACK, BCC, MEL, NEV, SCC, SEK -> AK, BCC, MEL, NV, SCC, BKL" in text
    assert "left out, never merged" in text
    for written in ("predictions.csv", "metrics.json", "confusion_matrix.png", "evaluate.md"):
        assert written in text
    assert "skintune evaluate --model results/demo/export --format ham10000" in text


def test_top_level_help_lists_the_pipeline():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text
    assert "skintune demo --storage results" in text


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("skintune: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_unknown_format_and_missing_root(tmp_path, capsys):
    err = _error(capsys, ["prepare", "--format", "isic2018", "--root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "isic2018" in err and "isic2019" in err
    err = _error(capsys, ["prepare", "--format", "isic2019", "--root", str(tmp_path / "nope"), "--out", "o"])
    assert "nope" in err


def _experiment(tmp_path, text: str):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return str(path)


def test_experiment_yaml_errors_are_reported_together(tmp_path, capsys):
    path = _experiment(
        tmp_path,
        "name: x\ndata: {root: /data}\ntrain: {epochs: -1, learning_rate: 0.1}\ntune: {num_smaples: 3}\n",
    )
    err = _error(capsys, ["train", "--config", path])
    assert "exp.yaml" in err
    assert "train.epochs" in err and "train.learning_rate: unknown key" in err and "tune.num_smaples" in err


def test_invalid_yaml_names_the_line(tmp_path, capsys):
    path = _experiment(tmp_path, "name: x\ndata: {root: [unclosed\n")
    err = _error(capsys, ["tune", "--config", path])
    assert "exp.yaml line" in err and "not valid YAML" in err


def test_resume_of_a_missing_experiment_and_export_before_retrain(tmp_path, capsys):
    path = _experiment(tmp_path, f"name: ghost\nstorage: {tmp_path}\ndata: {{root: {tmp_path}}}\n")
    err = _error(capsys, ["tune", "--config", path, "--resume"])
    assert "no experiment to resume" in err
    err = _error(capsys, ["export", "--storage", str(tmp_path), "--experiment", "ghost"])
    assert "ghost" in err and "experiment.yaml not found" in err


def test_console_script_exit_code_and_debug_traceback(tmp_path):
    argv = [sys.executable, "-m", "tuner.cli", "prepare", "--format", "nope", "--root", str(tmp_path), "--out", "o"]
    plain = subprocess.run(argv, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "nope" in plain.stderr
    debug = subprocess.run(argv[:3] + ["--debug"] + argv[3:], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "UserError" in debug.stderr
