"""The end-to-end smoke demo on a real local Ray: synth -> prepare -> tune -> retrain -> compare -> export,
then assertions on the artifacts a user reads and ships."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

from tuner.cli import main
from tuner.demo import run_demo
from tuner.predict import load_bundle, predict_images

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def demo(ray_cluster, tmp_path_factory):
    """One smoke demo for the module: (its outputs, its folder, what it printed)."""
    tmp_path = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # the smoke experiment's relative data root lands here
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            out = run_demo(str(tmp_path / "results"), smoke=True)
    return out, tmp_path, buffer.getvalue()


def test_smoke_demo_end_to_end(demo):
    out, tmp_path, printed = demo
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "demo finished"):
        assert stage in printed
    exp_dir = Path(out["experiment_dir"])

    # the search and the retrain runs
    table = pd.read_parquet(exp_dir / "tune" / "results.parquet")
    assert len(table) == 4 and (table["status"] != "error").all()
    summary = json.loads((exp_dir / "retrain" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["baseline_kind"] == "ablation"
    assert summary["config"]["multitask"] is True and summary["baseline_config"]["multitask"] is False

    # the report: sections, embedded decodable plots, statistics consistent with the per-image predictions
    html = Path(out["report"]).read_text()
    markdown = (exp_dir / "report" / "report.md").read_text()
    for title in (
        "Headline: MTL vs single-task",
        "Per-class recall",
        "Lesion accuracy per body site",
        "Confusion matrices",
        "Site head",
    ):
        assert title in html and title in markdown
    assert "difference" in markdown.lower() and 'src="http' not in html
    # each real retrain run records how its test split was evaluated, and the report says it
    for arm in ("mtl", "single_task"):
        for seed in (0, 1):
            run = json.loads((exp_dir / "retrain" / arm / f"seed_{seed}" / "metrics.json").read_text())
            assert run["test_eval"] == {"tta": 1, "device": "cpu"}
    assert "Test-time augmentation: off (1 view); test evaluation on `cpu`." in markdown
    pngs = sorted((exp_dir / "report").glob("*.png"))
    assert len(pngs) >= 5
    for png in pngs:
        Image.open(png).verify()
    assert html.count("data:image/png;base64,") >= len(pngs)
    results = pd.read_parquet(exp_dir / "report" / "results.parquet")
    for arm in ("mtl", "single_task"):
        for seed in (0, 1):
            pred = pd.read_parquet(exp_dir / "retrain" / arm / f"seed_{seed}" / "predictions.parquet")
            expected = balanced_accuracy_score(pred["lesion"], np.stack(pred["lesion_probs"]).argmax(1))
            row = results[(results.arm == arm) & (results.seed == seed) & (results.metric == "test/lesion_bacc")]
            assert row["value"].iloc[0] == pytest.approx(expected, abs=1e-9)

    # the export reloads and predicts on the synthetic images
    images = sorted((tmp_path / "data" / "synth-smoke" / "ISIC_2019_Training_Input").glob("*.jpg"))[:6]
    rows = predict_images(load_bundle(out["export"]), images)
    assert len(rows) == 6
    for row in rows:
        assert sum(row["lesion_probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert sum(row["site_probs"].values()) == pytest.approx(1.0, abs=1e-5)
    card = (Path(out["export"]) / "MODEL_CARD.md").read_text()
    assert "none (random init)" in card  # the smoke backbone is trained from scratch, and the card says so
    assert io.BytesIO((Path(out["export"]) / "model.safetensors").read_bytes()).getbuffer().nbytes > 0


def test_rerun_after_interruptions_skips_finished_work_and_gives_the_same_report(demo, sigkill_when):
    out, tmp_path, _ = demo
    exp_dir = Path(out["experiment_dir"])
    common = ["--storage", str(exp_dir.parent), "--experiment", "smoke"]

    # compare again: the same report table (every statistic is seeded)
    before = pd.read_parquet(exp_dir / "report" / "results.parquet")
    assert main(["compare", *common]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(exp_dir / "report" / "results.parquet"), before)

    # an export killed part-way leaves only its hidden temp folder: the rerun writes the same bundle, tidies up
    bundle = Path(out["export"])
    metrics = json.loads((bundle / "metrics.json").read_text())
    stale = bundle.with_name(f".{bundle.name}.tmp-deadbeef")
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    assert main(["export", *common]) == 0
    assert json.loads((bundle / "metrics.json").read_text()) == metrics and not stale.exists()

    # retrain killed (SIGKILL) while one run trains again: the rerun trains only that run, keeps the others
    runs = {p.parent: p.stat().st_mtime_ns for p in (exp_dir / "retrain").glob("*/seed_*/metrics.json")}
    redo = exp_dir / "retrain" / "mtl" / "seed_1"
    shutil.rmtree(redo)
    cmd = [sys.executable, "-m", "tuner.cli", "retrain", *common]
    # after its first checkpoint: the run's workers are up (see README, known limitations)
    sigkill_when(cmd, lambda: list(redo.glob("run/checkpoint_*")), "retrain", timeout=180, poll=0.05)
    assert not (redo / "metrics.json").exists()
    assert main(["retrain", *common]) == 0
    assert (redo / "metrics.json").is_file()
    for run, mtime in runs.items():
        if run != redo:
            assert (run / "metrics.json").stat().st_mtime_ns == mtime  # finished runs were skipped
