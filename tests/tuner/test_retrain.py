"""Which configurations retrain trains: the best usable trial, and the ablation or the tuned baseline."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

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
