"""The equal-budget tuned baseline (``compare: {baseline: tuned}``) and named arms (``compare.arms``): config,
layout and each arm's search space, the budget check of retrain (unit tests, no Ray), and the four-arm smoke
comparison on a real local Ray: tune runs a search per arm, retrain trains each arm from its own search's best
trial, the report compares each arm with single-task and shows every budget."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from PIL import Image

from trainables.errors import UserError
from tuner.cli import main
from tuner.layout import SINGLE_TASK, runs_dir, search_arms, search_title, tune_dir
from tuner.report import context_sections, plots, render
from tuner.report import search as search_mod
from tuner.report.render import Section
from tuner.results import BUDGET_FIELDS, read_search_record, search_record, write_results, write_search_record
from tuner.retrain import search_budgets
from tuner.searcher import arm_space
from tuner.tune_run import write_experiment_yaml

FOLDERS = {"mtl": "tune", "meta": "tune_meta", "mtl_meta": "tune_mtl_meta", SINGLE_TASK: "tune_single_task"}


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("skintune: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_compare_section_defaults_to_the_ablation_and_refuses_typos(make_experiment, tmp_path, capsys):
    exp = make_experiment("plain")
    assert exp.compare.baseline == "ablation" and search_arms(exp) == ("mtl",)
    tuned = make_experiment("tuned", compare={"baseline": "tuned"})
    assert search_arms(tuned) == ("mtl", "single_task")
    bad_arms = (
        ({"baseline": "tunde"}, ("compare.baseline", "tuned")),
        ({"arms": 2}, ("compare.arms",)),
        ({"arms": ["mtl", "meta"]}, ("compare.arms", "list single_task")),
        ({"arms": ["mtl", "mtl", "single_task"]}, ("compare.arms", "lists mtl more than once")),
        ({"arms": ["mtl", "metadata", "single_task"]}, ("compare.arms", "meta")),
    )
    for bad, words in bad_arms:
        raw = yaml.safe_load((tmp_path / "plain.yaml").read_text())
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**raw, "compare": bad}))
        err = _error(capsys, ["tune", "--config", str(tmp_path / "bad.yaml")])
        assert "bad.yaml" in err and all(w in err for w in words), err


def test_each_search_has_its_own_folder_and_the_mtl_one_keeps_its_path(make_experiment):
    exp = make_experiment("layout", compare={"baseline": "tuned"})
    root = Path(exp.experiment_dir)
    assert Path(tune_dir(exp)) == Path(tune_dir(exp, "mtl")) == root / "tune"  # old experiments keep working
    assert Path(tune_dir(exp, SINGLE_TASK)) == root / "tune_single_task"
    assert Path(runs_dir(exp, SINGLE_TASK)) == root / "tune_single_task" / "runs"


def test_the_baseline_space_is_the_experiments_own_minus_its_scientific_parameters(make_experiment):
    exp = make_experiment("spaces", compare={"baseline": "tuned"})
    mtl, single = arm_space(exp), arm_space(exp, SINGLE_TASK)
    assert mtl.scientific() == ["w_site"] and single.scientific() == []
    assert single.nuisance() == mtl.nuisance() and single.defaults()["multitask"] is False
    already = make_experiment("already", search_space="single_task", compare={"baseline": "tuned"})
    with pytest.raises(UserError, match="already single-task"):
        arm_space(already, SINGLE_TASK)


def test_every_tuned_arm_searches_the_experiments_space_turned_into_the_arms(make_experiment):
    exp = make_experiment("arms", compare={"baseline": "tuned", "arms": "all"})
    assert search_arms(exp) == ("mtl", "meta", "mtl_meta", "single_task")
    assert [Path(tune_dir(exp, a)).name for a in search_arms(exp)] == [
        "tune",
        "tune_meta",
        "tune_mtl_meta",
        "tune_single_task",
    ]
    assert search_title(exp) == "MTL search" and search_title(exp, "meta") == "metadata input search"
    spaces = {arm: arm_space(exp, arm) for arm in search_arms(exp)}
    assert spaces["single_task"] == arm_space(exp).single_task()  # as before named arms
    meta, both = spaces["meta"].defaults(), spaces["mtl_meta"].defaults()
    assert meta["multitask"] is False and meta["metadata_inputs"] == ["site", "age", "sex"] and "w_site" not in meta
    assert both["multitask"] is True and both["metadata_inputs"] == ["site", "age", "sex"] and "w_site" in both
    for arm in ("meta", "mtl_meta"):  # the metadata branch's nuisance parameters, as meta.yaml searches them
        assert {"fusion_width", "metadata_dropout"} <= set(spaces[arm].nuisance())
        assert set(spaces["mtl"].nuisance()) <= set(spaces[arm].nuisance())
    assert spaces["mtl_meta"].scientific() == spaces["mtl"].scientific() == ["w_site"]

    # a metadata-input search space: its search is the meta arm's (tune/), and the console names it so
    own = make_experiment("meta-own", search_space="meta", compare={"baseline": "tuned"})
    assert search_arms(own) == ("meta", "single_task") and Path(tune_dir(own, "meta")).name == "tune"
    assert search_title(own) == "metadata input search"
    single = arm_space(own, "single_task").defaults()
    assert single["metadata_inputs"] == [] and "fusion_width" not in single and single["multitask"] is False
    both_arms = make_experiment("meta-mtl", search_space="meta", compare={"baseline": "tuned", "arms": "all"})
    with pytest.raises(UserError, match="the mtl arm trains the site as a target, but search space 'meta'"):
        arm_space(both_arms, "mtl")
    missing = make_experiment("no-own", compare={"baseline": "tuned", "arms": ["meta", "single_task"]})
    with pytest.raises(UserError, match="the experiment's own search .* is the mtl arm's, which is not listed"):
        search_arms(missing)


def _finished_search(exp, arm: str | None = None, fingerprint: str = "fp-1", **params) -> dict:
    """A finished search's results table and record (search.json), as `tune` writes them (arm None: the
    experiment's own search)."""
    row = {"trial_id": f"{arm or 'own'}_0", "status": "completed", "epochs": 2, "best_objective": 0.5, "wall_s": 3.0}
    table = pd.DataFrame([{**row, **{f"param/{k}": v for k, v in params.items()}}])
    Path(tune_dir(exp, arm)).mkdir(parents=True, exist_ok=True)
    write_results(table, tune_dir(exp, arm))
    record = search_record(exp, arm, fingerprint, 12.5, table)
    write_search_record(record, tune_dir(exp, arm))
    write_experiment_yaml(exp)
    return record


def test_search_record_holds_the_budget_and_what_was_spent(make_experiment):
    exp = make_experiment("record", tune={"scheduler": "none", "sampler": "random", "max_trial_epochs": 9})
    record = _finished_search(exp, lr_head=1e-3)
    assert read_search_record(tune_dir(exp)) == record
    assert record["num_samples"] == 4 and record["max_epochs"] == 2 and record["max_trial_epochs"] == 9
    assert record["scheduler"] == "none" and record["grace_period"] is None and record["tpe_startup_trials"] is None
    assert record["trials_run"] == 1 and record["trial_epochs"] == 2 and record["wall_s"] == 12.5
    assert record["dataset_fingerprint"] == "fp-1" and record["finished"] is True and set(BUDGET_FIELDS) <= set(record)
    assert read_search_record(tune_dir(exp, SINGLE_TASK)) is None


def test_a_baseline_search_with_another_budget_or_data_is_refused_in_one_line(make_experiment, tmp_path, capsys):
    mtl = make_experiment("mtl", compare={"baseline": "tuned"})
    _finished_search(mtl, lr_head=1e-3, w_site=1.0)
    common = ["retrain", "--storage", mtl.storage, "--experiment", "mtl"]

    # another experiment's search with twice the trials
    other = make_experiment("st", search_space="single_task", tune={"num_samples": 8})
    _finished_search(other, lr_head=5e-4)
    err = _error(capsys, [*common, "--baseline", "tuned", "--baseline-experiment", "st"])
    assert "differs from the MTL search" in err and "num_samples: 8 vs 4" in err, err

    # the experiment's own baseline search (the default baseline: compare.baseline), on other data
    _finished_search(mtl, SINGLE_TASK, fingerprint="fp-2", lr_head=2e-4)
    err = _error(capsys, common)
    assert "tune_single_task" in err and "dataset_fingerprint: fp-2 vs fp-1" in err and "num_samples" not in err

    # the same budget and data: both records go to summary.json
    _finished_search(mtl, SINGLE_TASK, lr_head=2e-4)
    budgets = search_budgets(mtl, "tuned", None)
    assert budgets["mtl"]["arm"] == "mtl" and budgets[SINGLE_TASK]["arm"] == SINGLE_TASK
    assert {f: budgets["mtl"][f] for f in BUDGET_FIELDS} == {f: budgets[SINGLE_TASK][f] for f in BUDGET_FIELDS}
    assert search_budgets(mtl, "ablation", None)[SINGLE_TASK] is None  # the ablation is never refused

    # a search without a record (run before skintune wrote them) cannot be checked
    Path(tune_dir(mtl, SINGLE_TASK), "search.json").unlink()
    err = _error(capsys, common)
    assert "tune_single_task/search.json not found" in err and "--baseline ablation" in err


def test_budget_table_and_best_so_far_plot(make_experiment, tmp_path):
    exp = make_experiment("budgets")
    found = {}
    for arm, values in (("mtl", [0.4, math.nan, 0.6]), (SINGLE_TASK, [0.5, 0.45, 0.55])):
        record = search_record(exp, arm, "fp", 90.0, pd.DataFrame({"epochs": [2, 1, 2]}))
        trials = pd.DataFrame({"best_objective": values, "epochs": [2, 1, 2], "wall_s": 30.0})
        found[arm] = search_mod.ArmSearch(arm, search_mod.SEARCH_TITLES[arm], trials, record)
    rows = {r[0]: r[1:] for r in search_mod.budget_rows(found)}
    assert rows["trials run"] == ["3", "3"] and rows["trial-epochs run"] == ["5", "5"]
    assert rows["wall time of the search"] == ["1.5 min", "1.5 min"] and rows["scheduler"][0].startswith("ASHA")
    assert "same budget" in search_mod.budget_notes(found)[0]
    found[SINGLE_TASK].record["seed"] = 7
    assert "seed: 7 vs 0" in search_mod.budget_notes(found)[0]
    labels = {arm: s.title for arm, s in found.items()}
    png = plots.best_so_far({a: s.trials for a, s in found.items()}, labels, "val/x", "max", tmp_path / "b.png")
    Image.open(png).verify()

    # the ablation is labelled for what it is; it has no search of its own to show
    ablation = SimpleNamespace(summary={"baseline_kind": "ablation"})
    text = render.markdown(
        "t", "s", [Section("x", context_sections._baseline_blocks(ablation, {}, "m", "max", tmp_path))]
    )
    assert "Single-task baseline: ablation (MTL's best configuration with the site head off)" in text
    assert "no search of its own" in text and not list(tmp_path.glob("best_so_far*"))


@pytest.mark.ray
def test_four_tuned_arms_pipeline_tune_retrain_compare(ray_cluster, make_experiment, tmp_path, capsys):
    """The four-arm smoke comparison end to end on real Ray, each arm tuned with the same budget (the tuned
    baseline's machinery, one search per arm): tune, resume, retrain, compare."""
    # smoke sizes: 1 trial of 1 epoch in each of the 4 searches (the space's defaults: the best-trial choice has its
    # own tests), 1 worker a run (two at once on the test cluster), 2 seeds of each arm, the 48 px smoke data
    exp = make_experiment(
        "tuned",
        compare={"baseline": "tuned", "arms": "all"},
        tune={"num_samples": 1, "max_epochs": 1, "grace_period": 1},
        train={"workers_per_trial": 1, "epochs": 1},
        retrain={"seeds": 2},
    )
    config, root = str(tmp_path / "tuned.yaml"), Path(exp.experiment_dir)
    assert main(["tune", "--config", config]) == 0
    printed = capsys.readouterr().out
    assert "tune: MTL search, 1 trial of" in printed and "tune: single-task baseline search, 1 trial of" in printed
    assert "tune: metadata input search, 1 trial of" in printed and "tune: MTL + metadata search, 1 trial of" in printed

    # a search per arm, each with its own table, runs and record; the same budget and data
    tables = {arm: pd.read_parquet(root / folder / "results.parquet") for arm, folder in FOLDERS.items()}
    mtl, single, meta, both = (tables[a] for a in ("mtl", SINGLE_TASK, "meta", "mtl_meta"))
    assert all(len(t) == 1 and (t["status"] != "error").all() for t in tables.values())
    assert mtl["param/w_site"].notna().all() and "param/w_site" not in single
    assert (single["param/multitask"] == False).all()  # noqa: E712 - a column of numpy bools
    assert single["checkpoint_path"].map(lambda p: "tune_single_task/runs/" in str(p)).all()
    for table in (meta, both):  # the metadata arms searched the metadata branch too
        assert table["param/metadata_inputs"].map(lambda v: sorted(v) == ["age", "sex", "site"]).all()
        assert table["param/fusion_width"].notna().all() and table["param/metadata_dropout"].notna().all()
    assert both["param/w_site"].notna().all() and "param/w_site" not in meta
    records = {arm: json.loads((root / folder / "search.json").read_text()) for arm, folder in FOLDERS.items()}
    fingerprint = json.loads((Path(exp.prepared_dir) / "dataset.json").read_text())["fingerprint"]
    for arm, record in records.items():
        assert record["arm"] == arm and record["finished"] and record["trials_run"] == 1
        assert record["trial_epochs"] == 1 and record["wall_s"] > 0 and record["dataset_fingerprint"] == fingerprint
        assert {f: record[f] for f in BUDGET_FIELDS} == {f: records["mtl"][f] for f in BUDGET_FIELDS}

    # --resume after all finished: each search is kept, not rerun
    mtimes = {p: p.stat().st_mtime_ns for p in root.glob("tune*/results.parquet")}
    assert main(["tune", "--config", config, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier; kept") == 4
    assert {p: p.stat().st_mtime_ns for p in root.glob("tune*/results.parquet")} == mtimes

    # retrain: every arm x seed, each arm from its own search's best trial (compare.baseline is the default)
    common = ["--storage", exp.storage, "--experiment", "tuned"]
    assert main(["retrain", *common]) == 0
    summary = json.loads((root / "retrain" / "summary.json").read_text())
    assert summary["baseline_kind"] == "tuned" and summary["arms"] == ["mtl", "meta", "mtl_meta", SINGLE_TASK]
    assert {arm: summary["budgets"][arm]["arm"] for arm in FOLDERS} == {arm: arm for arm in FOLDERS}
    best = single.sort_values("best_objective", ascending=False).iloc[0]
    assert summary["baseline_config"]["lr_head"] == pytest.approx(best["param/lr_head"])
    assert summary["baseline_config"]["multitask"] is False and summary["config"]["multitask"] is True
    flags = {arm: (c["multitask"], c["metadata_inputs"]) for arm, c in summary["configs"].items()}
    assert flags == {
        "mtl": (True, []),
        "meta": (False, ["site", "age", "sex"]),
        "mtl_meta": (True, ["site", "age", "sex"]),
        SINGLE_TASK: (False, []),
    }
    n_test = None
    for arm in FOLDERS:
        for seed in (0, 1):
            preds = pd.read_parquet(root / "retrain" / arm / f"seed_{seed}" / "predictions.parquet")
            n_test = n_test or len(preds)
            assert len(preds) == n_test and preds["lesion_probs"].map(len).gt(1).all(), (arm, seed)
            metrics = json.loads((root / "retrain" / arm / f"seed_{seed}" / "metrics.json").read_text())
            assert metrics["arm"] == arm and metrics["seed"] == seed and "test/lesion_bacc" in metrics["test"]

    # the report: each arm against single-task, Holm over the arms, what each needs at inference, every budget
    assert main(["compare", *common]) == 0
    markdown = (root / "report" / "report.md").read_text()
    assert "## Headline: each arm vs single-task" in markdown
    primary = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if "| balanced accuracy | primary |" in line
    ]
    assert [row[0] for row in primary] == ["MTL", "metadata input", "MTL + metadata"]  # 3 comparisons
    arms = json.loads((root / "report" / "arms.json").read_text())
    assert sorted(arms) == ["meta", "mtl", "mtl_meta"]
    for arm in arms:
        row = arms[arm]["test/lesion_bacc"]
        assert row["role"] == "primary" and row["p_holm"] >= row["p_value"]
    assert "| metadata input (`meta`) | lesion only | image + site, age, sex |" in markdown
    assert "| MTL + metadata (`mtl_meta`) | lesion + body site (auxiliary head) | image + site, age, sex |" in markdown
    assert "| MTL (`mtl`) | lesion + body site (auxiliary head) | image only |" in markdown
    assert "Arm searches" in markdown and "tuned (each arm is the best trial of its own search" in markdown
    budget_row = next(line for line in markdown.splitlines() if line.startswith("| trial-epochs run"))
    assert budget_row.replace(" ", "") == "|trial-epochsrun|1|1|1|1|"
    searches = "| MTL search | metadata input search | MTL + metadata search | single-task baseline search |"
    assert searches in markdown and "All 4 searches had the same budget" in markdown
    Image.open(root / "report" / "best_so_far.png").verify()
