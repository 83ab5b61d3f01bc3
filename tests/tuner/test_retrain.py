"""Which configurations retrain trains: the best usable trial, and the ablation or the tuned baseline."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from trainables.config import parse_train_config
from trainables.errors import UserError
from tuner.layout import tune_dir
from tuner.results import write_results
from tuner.retrain import arm_configs, best_trial


def _write_table(exp, rows: list[dict]) -> None:
    Path(tune_dir(exp)).mkdir(parents=True, exist_ok=True)
    write_results(pd.DataFrame(rows), tune_dir(exp))


def _row(trial, status, best, **params):
    return {
        "trial_id": trial,
        "status": status,
        "epochs": 2,
        "best_objective": best,
        **{f"param/{k}": v for k, v in params.items()},
    }


def test_best_usable_trial_and_both_baselines(make_experiment):
    mtl = make_experiment("mtl-search")
    _write_table(
        mtl,
        [
            _row("a", "completed", 0.40, lr_head=1e-3, w_site=0.5, lesion_loss="ce", focal_gamma=math.nan),
            _row("b", "diverged", 0.90, lr_head=1.0, w_site=1.0, lesion_loss="ce", focal_gamma=math.nan),
            _row("c", "stopped_early", 0.55, lr_head=3e-3, w_site=1.5, lesion_loss="focal", focal_gamma=2.0),
            _row("d", "error", math.nan, lr_head=2e-3, w_site=0.1, lesion_loss="ce", focal_gamma=math.nan),
        ],
    )
    trial, params = best_trial(mtl)
    assert trial == "c" and params == {"lr_head": 3e-3, "w_site": 1.5, "lesion_loss": "focal", "focal_gamma": 2.0}

    _, ablation = arm_configs(mtl, "/prepared", "ablation", None)
    assert ablation["mtl"]["multitask"] is True and ablation["single_task"]["multitask"] is False
    same = {k: v for k, v in ablation["mtl"].items() if k != "multitask"}
    assert same == {k: v for k, v in ablation["single_task"].items() if k != "multitask"}
    assert ablation["mtl"]["epochs"] == mtl.tune.max_epochs and ablation["mtl"]["lr_head"] == 3e-3

    single = make_experiment("st-search")
    _write_table(single, [_row("s1", "completed", 0.50, lr_head=5e-4, lesion_loss="ce")])
    _, tuned = arm_configs(mtl, "/prepared", "tuned", single)
    assert tuned["single_task"]["lr_head"] == 5e-4 and tuned["single_task"]["multitask"] is False
    assert tuned["single_task"]["epochs"] == tuned["mtl"]["epochs"] and tuned["mtl"]["lr_head"] == 3e-3
    with pytest.raises(UserError, match="--baseline-experiment"):
        arm_configs(mtl, "/prepared", "tuned", None)


def test_nothing_to_retrain_is_a_clear_error(make_experiment):
    exp = make_experiment("empty")
    with pytest.raises(UserError, match="run `skintune tune"):
        best_trial(exp)
    _write_table(exp, [_row("x", "error", math.nan, lr_head=1e-3)])
    with pytest.raises(UserError, match="no trial finished"):
        best_trial(exp)


def test_four_arms_as_ablations_of_one_configuration(make_experiment):
    exp = make_experiment("arms", compare={"arms": "all"})
    _write_table(exp, [_row("a", "completed", 0.6, lr_head=2e-3, w_site=0.7, lesion_loss="ce")])
    trial, configs = arm_configs(exp, "/prepared", "ablation", None)
    assert trial == "a" and list(configs) == ["mtl", "meta", "mtl_meta", "single_task"]
    switched = {arm: (c["multitask"], c["metadata_inputs"]) for arm, c in configs.items()}
    assert switched == {
        "mtl": (True, []),
        "meta": (False, ["site", "age", "sex"]),
        "mtl_meta": (True, ["site", "age", "sex"]),
        "single_task": (False, []),
    }
    rest = [{k: v for k, v in c.items() if k not in ("multitask", "metadata_inputs")} for c in configs.values()]
    assert all(r == rest[0] for r in rest) and rest[0]["lr_head"] == 2e-3  # only the arm's switches differ
    for config in configs.values():  # each is a valid training config
        parse_train_config(config, source="test")


def test_tuned_arms_use_their_own_searches_best_trials(make_experiment):
    exp = make_experiment("tuned-arms", compare={"baseline": "tuned", "arms": ["mtl", "meta", "single_task"]})
    _write_table(exp, [_row("m", "completed", 0.6, lr_head=2e-3, w_site=0.7)])
    meta = [_row("x", "completed", 0.7, lr_head=4e-3, fusion_width=32, metadata_dropout=0.2)]
    for row in meta:
        row["param/metadata_inputs"] = ["site", "age", "sex"]  # a fixed list, read back from Parquet as an array
    Path(tune_dir(exp, "meta")).mkdir(parents=True)
    write_results(pd.DataFrame(meta), tune_dir(exp, "meta"))
    assert Path(tune_dir(exp, "meta")).name == "tune_meta"
    with pytest.raises(UserError, match="single-task baseline search"):
        arm_configs(exp, "/prepared", "tuned", None)  # tune_single_task/ has no results yet
    single = [_row("s", "completed", 0.5, lr_head=1e-3)]
    Path(tune_dir(exp, "single_task")).mkdir(parents=True)
    write_results(pd.DataFrame(single), tune_dir(exp, "single_task"))
    _, configs = arm_configs(exp, "/prepared", "tuned", None)
    assert configs["meta"]["lr_head"] == 4e-3 and configs["meta"]["fusion_width"] == 32
    assert configs["meta"]["metadata_inputs"] == ["site", "age", "sex"] and configs["meta"]["multitask"] is False
    assert configs["single_task"]["lr_head"] == 1e-3 and configs["mtl"]["lr_head"] == 2e-3
    assert parse_train_config(configs["meta"], source="test").metadata_inputs == ["site", "age", "sex"]
