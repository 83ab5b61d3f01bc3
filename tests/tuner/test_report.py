"""The compare report on a tiny fake-but-complete experiment directory (no Ray, no training)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

from search_spaces import load_space
from trainables.errors import UserError
from trainables.metrics import lesion_metrics, prefixed
from tuner.report import build_report, context_sections, result_sections
from tuner.report.load import load_inputs
from tuner.report.search import base_value, edge

LESION, SITES, SEEDS, N = ["MEL", "NV", "BCC"], ["head", "trunk"], [0, 1], 60


def _probs(y: np.ndarray, right: float, k: int, rng: np.random.Generator) -> np.ndarray:
    target = np.where(rng.random(len(y)) < right, y, (y + rng.integers(1, k, len(y))) % k)
    logits = rng.normal(0, 0.5, (len(y), k))
    logits[np.arange(len(y)), target] += 2.5
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _write_run(run: Path, arm: str, seed: int, frame: pd.DataFrame, probs: np.ndarray, site_probs) -> None:
    run.mkdir(parents=True)
    out = frame.assign(lesion_probs=list(probs), site_probs=list(site_probs) if site_probs is not None else None)
    order = np.random.default_rng(seed).permutation(len(out)) if seed else np.arange(len(out))
    out.iloc[order].reset_index(drop=True).to_parquet(run / "predictions.parquet")  # seed 1: another row order
    test = prefixed(lesion_metrics(frame["lesion"], probs, LESION), "test")
    metrics = {
        "arm": arm,
        "seed": seed,
        "epochs": 3,
        "checkpoint": "x",
        "val": {"val/lesion_bacc": 0.7},
        "test": test,
        "wall_s": 12.5,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))


def _trials() -> pd.DataFrame:
    rows = [  # trial 3 is best: w_site at the high edge of [0, 2]
        ("t_00000", "completed", 3, 0.61, 0.9, 0.01, "ce", None),
        ("t_00001", "stopped_early", 1, 0.42, 0.2, 0.05, "focal", 2.0),
        ("t_00002", "completed", 3, 0.66, 1.2, 0.002, "ce", None),
        ("t_00003", "completed", 3, 0.74, 1.98, 0.004, "focal", 1.5),
        ("t_00004", "diverged", 2, np.nan, 0.5, 0.09, "ce", None),
        ("t_00005", "error", 0, np.nan, 1.0, 0.0003, "focal", 3.0),
    ]
    cols = [
        "trial_id",
        "status",
        "epochs",
        "best_objective",
        "param/w_site",
        "param/lr_head",
        "param/lesion_loss",
        "param/focal_gamma",
    ]
    table = pd.DataFrame(rows, columns=cols)
    table["last_objective"], table["best_epoch"], table["wall_s"] = (
        table["best_objective"],
        table["epochs"],
        30.0,
    )
    table["param/backbone"], table["param/pretrained"] = "test_efficientnet", False
    table["error"] = [None] * 5 + ["RuntimeError: boom"]
    return table


# the four-arm report: how often each extra arm's seeds predict the right class (MTL 0.9, single-task 0.45 above)
EXTRA_ARMS = {"meta": 0.55, "mtl_meta": 0.85}


def make_experiment(root: Path, with_search: bool = True, arms: bool = False) -> Path:
    """A fake finished experiment: MTL and single-task (and with ``arms`` the meta and mtl_meta arms too)."""
    exp = root / "fake"
    rng = np.random.default_rng(0)
    lesion = rng.integers(0, 3, N)
    site = np.where(rng.random(N) < 0.1, -1, rng.integers(0, 2, N))
    frame = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(N)], "lesion": lesion, "site": site})
    frame["group_id"] = [f"lesion{i // 2:03d}" for i in range(N)]  # two images per lesion
    for seed in SEEDS:
        _write_run(
            exp / "retrain" / "mtl" / f"seed_{seed}",
            "mtl",
            seed,
            frame,
            _probs(lesion, 0.9, 3, rng),
            _probs(np.maximum(site, 0), 0.7, 2, rng),
        )
        _write_run(
            exp / "retrain" / "single_task" / f"seed_{seed}",
            "single_task",
            seed,
            frame,
            _probs(lesion, 0.45, 3, rng),
            None,
        )
    extra = np.random.default_rng(1)  # the two-arm experiment's draws stay as they were
    for arm, right in EXTRA_ARMS.items() if arms else ():
        for seed in SEEDS:
            site_probs = _probs(np.maximum(site, 0), 0.7, 2, extra) if arm == "mtl_meta" else None
            run = exp / "retrain" / arm / f"seed_{seed}"
            _write_run(run, arm, seed, frame, _probs(lesion, right, 3, extra), site_probs)
    summary = {
        "baseline_kind": "ablation",
        "best_trial": "t_00003",
        "seeds": SEEDS,
        "objective": "val/lesion_bacc",
        "config": {"backbone": "test_efficientnet", "w_site": 1.98},
        "gpu": False,
        "commands": ["skintune tune --config experiments/fake.yaml", "skintune retrain --experiment fake"],
    }
    if arms:
        names = ["mtl", "meta", "mtl_meta", "single_task"]
        with_meta = {"meta", "mtl_meta"}
        summary["arms"], summary["primary_arm"] = names, "mtl"
        summary["configs"] = {
            a: {"multitask": a.startswith("mtl"), "metadata_inputs": ["site", "age", "sex"] if a in with_meta else []}
            for a in names
        }
    (exp / "retrain" / "summary.json").write_text(json.dumps(summary))
    config = {
        "name": "fake",
        "storage": str(root),
        "data": {"root": "/data", "prepared": None},
        "search_space": "smoke",
        "tune": {"metric": "val/lesion_bacc", "mode": "max"},
        "train": {"workers_per_trial": 2},
    }
    (exp / "experiment.yaml").write_text(yaml.safe_dump(config))
    counts = {
        s: {
            "images": n,
            "groups": n,
            "lesion": {c: n // 3 for c in LESION},
            "site": {s: n // 2 - 2 for s in SITES},
            "site_missing": 4,
        }
        for s, n in (("train", 300), ("val", 60), ("test", N))
    }
    (exp / "prepared").mkdir()
    (exp / "prepared" / "dataset.json").write_text(
        json.dumps(
            {
                "lesion_classes": LESION,
                "site_classes": SITES,
                "counts": counts,
                "site_missing_rate": 0.1,
                "fingerprint": "abc123",
                "images": 420,
            }
        )
    )
    if with_search:
        (exp / "tune").mkdir()
        _trials().to_parquet(exp / "tune" / "results.parquet")
    return exp


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    exp = make_experiment(tmp_path_factory.mktemp("report"))
    return build_report(exp, n_perm=200).parent  # fewer permutations: fast; the statistics have their own tests


def test_every_section_is_in_both_formats(report):
    md, page = (report / "report.md").read_text(), (report / "report.html").read_text()
    for title in [*result_sections.TITLES.values(), *context_sections.TITLES.values()]:
        assert f"## {title}" in md
        assert f">{title}</h2>" in page
    assert "ended at the high edge" in md and "`w_site`" in md  # best w_site = 1.98 of [0, 2]
    assert "stopped early by the scheduler (ASHA) | 1" in md and "diverged (NaN loss) | 1" in md
    assert "abc123" in md and "skintune retrain --experiment fake" in md


def test_html_is_self_contained_and_pngs_decode(report):
    page = (report / "report.html").read_text()
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    assert "http://" not in page and "https://" not in page
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    pngs = sorted(report.glob("*.png"))
    assert len(uris) == len(pngs) >= 6
    for blob in [p.read_bytes() for p in pngs] + [base64.b64decode(u) for u in uris]:
        with Image.open(io.BytesIO(blob)) as img:
            img.load()
            assert img.size[0] > 100


def test_results_match_the_predictions(report):
    table = pd.read_parquet(report / "results.parquet")
    assert list(table.columns) == ["arm", "seed", "metric", "value"]
    for arm in ("mtl", "single_task"):
        for seed in SEEDS:
            preds = pd.read_parquet(report.parent / "retrain" / arm / f"seed_{seed}" / "predictions.parquet")
            expected = balanced_accuracy_score(preds["lesion"], np.stack(preds["lesion_probs"]).argmax(axis=1))
            got = table.query("arm == @arm and seed == @seed and metric == 'test/lesion_bacc'")["value"]
            assert got.item() == pytest.approx(expected)
    assert {"test/site_acc", "val/lesion_bacc", "test/recall/MEL"} <= set(table["metric"])


def test_headline_table_matches_the_per_seed_results(report):
    table = pd.read_parquet(report / "results.parquet")
    md = (report / "report.md").read_text()
    for arm in ("mtl", "single_task"):
        values = table[(table["arm"] == arm) & (table["metric"] == "test/lesion_bacc")]["value"]
        assert f"| {values.mean():.3f} ± {values.std(ddof=1):.3f} |" in md


def test_verdict_appears(report):
    md, page = (report / "report.md").read_text(), (report / "report.html").read_text()
    sentence = re.search(r"> \*\*(MTL is better than single-task by [\d.]+ points of balanced accuracy[^*]*)\*\*", md)
    assert sentence, md[:2000]
    assert sentence.group(1).split(" (")[0] in page


def test_statistics_are_described_as_computed(report):
    md = (report / "report.md").read_text()
    assert f"the {N // 2} lesion groups of the {N} test images" in md  # the bootstrap's second level
    assert "new training run, on new lesions" in md  # the estimand in words
    assert f"Only {len(SEEDS)} seed(s)" in md  # fewer than 5 seeds: said
    rows = [line for line in md.splitlines() if line.startswith("| balanced accuracy |") or "| exploratory |" in line]
    assert rows[0].startswith("| balanced accuracy | primary |") and len(rows) == 3  # the objective decides
    assert all(line.count("|") == 9 and line.rstrip(" |").split("|")[-1].strip() for line in rows[1:])  # Holm p
    class_rows = [line for line in md.splitlines() if line.startswith(("| MEL |", "| NV |", "| BCC |"))]
    assert len(class_rows) == 6 and all(" to " in line for line in class_rows[:3])  # per-class CIs (3 more: data)


def test_ci_json_holds_the_comparisons_the_export_quotes(report):
    md = (report / "report.md").read_text()
    ci = json.loads((report / "ci.json").read_text())
    assert [ci[k]["role"] for k in ("test/lesion_bacc", "test/lesion_auc", "test/lesion_acc")] == [
        "primary",
        "exploratory",
        "exploratory",
    ]
    row = ci["test/lesion_bacc"]
    assert f"{100 * row['diff']:+.1f} | {100 * row['low']:+.1f} to {100 * row['high']:+.1f}" in md
    assert row["p_holm"] is None and ci["test/lesion_auc"]["p_holm"] >= ci["test/lesion_auc"]["p_value"]


def test_without_search_and_without_retrain(tmp_path):
    exp = make_experiment(tmp_path, with_search=False)
    md = build_report(exp, n_boot=100, n_perm=50).with_name("report.md").read_text()
    assert "No search results" in md
    shutil.rmtree(exp / "retrain")
    with pytest.raises(UserError, match=r"no retrain results under .*skintune retrain --experiment fake"):
        build_report(exp)


def test_missing_or_inconsistent_predictions_are_user_errors(tmp_path):
    exp = make_experiment(tmp_path, with_search=False)
    preds = exp / "retrain" / "single_task" / "seed_1" / "predictions.parquet"
    frame = pd.read_parquet(preds)
    frame.iloc[:-1].to_parquet(preds)
    with pytest.raises(UserError, match=r"single_task/seed_1/predictions.parquet: its test images differ"):
        build_report(exp)
    preds.unlink()
    with pytest.raises(UserError, match=r"seed_1/predictions.parquet: not found"):
        build_report(exp)


def test_edges_and_scaled_values_use_the_base_range():
    space = {p.name: p for p in load_space("mtl").params}
    lr = space["lr_backbone"]  # [1e-5, 1e-3] log, x10 for resnet18
    assert base_value(lr, 5e-3, {"backbone": "resnet18"}) == pytest.approx(5e-4)
    assert edge(lr, 1.2e-5) == "low" and edge(lr, 9e-4) == "high" and edge(lr, 1e-4) == ""
    assert (
        edge(space["dropout"], 0.49) == "high"
        and edge(space["dropout"], 0.02) == "low"
        and edge(space["dropout"], 0.03) == ""
    )
    assert base_value(space["backbone"], "resnet18", {}) == "resnet18"


@pytest.fixture(scope="module")
def arms_report(tmp_path_factory) -> Path:
    exp = make_experiment(tmp_path_factory.mktemp("arms"), arms=True)
    return build_report(exp, n_boot=300, n_perm=200).parent


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_four_arms_each_against_single_task_with_holm_over_the_arms(arms_report):
    md = (arms_report / "report.md").read_text()
    assert "## Headline: each arm vs single-task" in md
    primary = [_cells(line) for line in md.splitlines() if "| balanced accuracy | primary |" in line]
    assert [row[0] for row in primary] == ["MTL", "metadata input", "MTL + metadata"]  # 3 comparisons
    for row in primary:
        raw, holm = (float(v.lstrip("<= ")) for v in row[7:9])
        assert holm >= raw
    arms = json.loads((arms_report / "arms.json").read_text())
    assert set(arms) == {"mtl", "meta", "mtl_meta"}
    rows = [arms[a]["test/lesion_bacc"] for a in ("mtl", "meta", "mtl_meta")]
    assert all(r["role"] == "primary" and r["p_holm"] >= r["p_value"] for r in rows)
    # Holm's step-down over the three primary p-values: the smallest is multiplied by 3
    smallest = min(rows, key=lambda r: r["p_value"])
    assert smallest["p_holm"] == pytest.approx(min(1.0, 3 * smallest["p_value"]))
    assert "Holm-adjusted over the 3 arms' primary comparisons" in md
    # one verdict per arm; MTL +45 points and MTL + metadata +40 points are found, metadata input (+10) is not sure
    verdicts = re.findall(r"> \*\*(.*?)\*\*", md)
    assert len(verdicts) == 3 and verdicts[0].startswith("MTL is better than single-task")
    assert verdicts[2].startswith("MTL + metadata is better than single-task") and "Holm-adjusted" in verdicts[0]
    # ci.json (quoted by the export) stays MTL - single-task
    ci = json.loads((arms_report / "ci.json").read_text())
    assert {r["arm"] for r in ci.values()} == {"mtl"} and ci["test/lesion_bacc"]["diff"] == arms["mtl"][
        "test/lesion_bacc"
    ]["diff"]


def test_the_inference_table_names_the_metadata_the_meta_arms_need(arms_report):
    md = (arms_report / "report.md").read_text()
    needs = {_cells(line)[0]: _cells(line)[2] for line in md.splitlines() if "(`" in line and line.startswith("| ")}
    assert needs == {
        "MTL (`mtl`)": "image only",
        "metadata input (`meta`)": "image + site, age, sex",
        "MTL + metadata (`mtl_meta`)": "image + site, age, sex",
        "single-task (`single_task`)": "image only",
    }
    table = pd.read_parquet(arms_report / "results.parquet")
    assert set(table["arm"]) == {"mtl", "meta", "mtl_meta", "single_task"}
    assert set(table[table["metric"] == "test/site_acc"]["arm"]) == {"mtl", "mtl_meta"}  # the site heads
    for title in ("Per-class recall", "Lesion accuracy per body site", "Confusion matrices", "Site head"):
        assert f"## {title}" in md
    class_rows = [_cells(line) for line in md.splitlines() if line.startswith("| MEL |")]
    assert len(class_rows[0]) == 2 + 4 + 3 and " to " in class_rows[0][-1]  # a rate per arm, a Δ with CI per arm
    assert len(list(arms_report.glob("*.png"))) >= 6


def test_a_summary_with_unknown_arms_is_a_user_error(tmp_path):
    exp = make_experiment(tmp_path, with_search=False, arms=True)
    summary = json.loads((exp / "retrain" / "summary.json").read_text())
    (exp / "retrain" / "summary.json").write_text(json.dumps({**summary, "arms": ["mtl", "meta"]}))
    with pytest.raises(UserError, match=r"summary.json: arms \['mtl', 'meta'\] must .* include single_task"):
        build_report(exp)


def test_calibration_section_has_tta_line_table_and_figures(report, arms_report):
    md = (report / "report.md").read_text()
    assert "## Calibration and test evaluation" in md
    assert "Test-time augmentation: not recorded" in md  # the fake runs predate metrics.json's test_eval
    assert "fits a temperature T on the validation split" in md  # raw calibration; export fits T
    for out, arms in (
        (report, ["MTL", "single-task"]),
        (arms_report, ["MTL", "metadata input", "MTL + metadata", "single-task"]),
    ):
        text = (out / "report.md").read_text()
        body = text.split("| arm | ECE | NLL | ECE per seed |")[1].split("\n\n")[0]
        rows = [_cells(line) for line in body.strip().splitlines()[1:]]
        assert [r[0] for r in rows] == arms  # a row per arm
        assert all(" ± " in r[1] and " ± " in r[2] for r in rows)
        for name in ("reliability.png", "roc.png"):
            with Image.open(out / name) as img:
                assert img.size[0] > 100
    assert re.search(r"MEL, MTL: AUC|ROC per class: MTL \(solid\) and single-task \(dashed\)", md)


def test_tta_line_reads_each_runs_test_eval():
    old = {"mtl": [{}], "single_task": [{}]}
    assert "not recorded" in result_sections.tta_text(old)
    on = {
        "mtl": [{"test_eval": {"tta": 8, "device": "cuda"}}],
        "single_task": [{"test_eval": {"tta": 8, "device": "cuda"}}],
    }
    assert result_sections.tta_text(on).startswith(
        "Test-time augmentation: on (8 views"
    ) and "`cuda`" in result_sections.tta_text(on)
    off = {"mtl": [{"test_eval": {"tta": 1, "device": "cpu"}}], "single_task": [{}]}
    assert "off (1 view)" in result_sections.tta_text(
        off
    ) and "not recorded for 1 of 2 runs" in result_sections.tta_text(off)


def test_ece_of_a_calibrated_arm_is_small_next_to_an_over_confident_one(tmp_path):
    inp = load_inputs(make_experiment(tmp_path, with_search=False))
    rng, n, k = np.random.default_rng(3), 4000, 3
    calibrated = rng.dirichlet(np.ones(k), n)  # the true class is drawn from the probabilities: calibrated
    labels = np.array([rng.choice(k, p=p) for p in calibrated])
    over = np.full((n, k), 0.005)
    over[np.arange(n), calibrated.argmax(axis=1)] = 0.99  # the same argmax, 99 % sure
    inp.lesion = labels
    inp.probs = {"mtl": [calibrated], "single_task": [over]}
    numbers = result_sections.calibration_numbers(inp)
    assert numbers["mtl"]["ece"][0] < 0.03 < 0.2 < numbers["single_task"]["ece"][0]
    assert numbers["mtl"]["nll"][0] < numbers["single_task"]["nll"][0]


def test_rate_bars_take_seeds_with_equal_rates(tmp_path):
    # three seeds with the same rate 0.1: their float mean rounds a hair above the maximum, so max - mean < 0
    # (the four-arm demo's report died on it: matplotlib refuses a negative whisker)
    from tuner.report import plots

    same = np.full((3, 2), 0.1)
    assert (np.nanmax(same, axis=0) - np.nanmean(same, axis=0) < 0).all()  # the premise of this test
    out = plots.grouped_rates(
        ["a", "b"], np.array([3, 4]), {"mtl": same, "single_task": same / 2}, "t", "x", tmp_path / "rates.png"
    )
    assert out.is_file() and out.stat().st_size > 0
