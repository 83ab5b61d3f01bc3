"""The end-to-end smoke demo on a real local Ray: synth -> prepare -> tune -> retrain -> compare -> export,
then assertions on the artifacts a user reads and ships."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

from tuner.demo import run_demo
from tuner.predict import load_bundle, predict_images

pytestmark = pytest.mark.ray


def test_smoke_demo_end_to_end(ray_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the smoke experiment's relative data root lands here
    out = run_demo(str(tmp_path / "results"), smoke=True)
    printed = capsys.readouterr().out
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
