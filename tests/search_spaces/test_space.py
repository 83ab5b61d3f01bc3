"""Search-space loader, validator and define-by-run function: `.venv/bin/pytest tests/search_spaces -q`."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import optuna
import pytest

from search_spaces import (
    DefineByRun,
    SearchSpace,
    SearchSpaceError,
    define_by_run,
    load_space,
    shipped,
)
from trainables.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)

BAD = Path(__file__).parent / "bad"
# The training-config keys a search space may set (the contract with trainables.config.TrainConfig).
KNOWN_KEYS = [
    *(
        "backbone",
        "pretrained",
        "dropout",
        "multitask",
        "w_lesion",
        "w_site",
        "loss_weighting",
        "lesion_loss",
    ),
    *("focal_gamma", "label_smoothing", "lr_backbone", "lr_head", "weight_decay", "warmup_epochs"),
    *("aug_strength", "crop_scale_min", "hflip", "rotation", "batch_size", "epochs"),
    *("metadata_inputs", "metadata_dropout", "fusion_width"),
]


def run_study(space: SearchSpace, n: int, seed: int = 0) -> tuple[optuna.Study, list[dict]]:
    """A real Optuna study (TPE) driving the define-by-run function; returns it and each sampled dict."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    fn, samples = define_by_run(space), []

    def objective(trial: optuna.Trial) -> float:
        samples.append(fn(trial))
        return -abs(math.log10(samples[-1].get("lr_head", 1e-3)) + 3)  # anything deterministic

    study.optimize(objective, n_trials=n)
    return study, samples


@pytest.mark.parametrize("name", ["demo", "meta", "mtl", "single_task", "smoke"])
def test_shipped_space_samples_valid_values(name: str) -> None:
    space = load_space(name, known_keys=KNOWN_KEYS)
    assert name in shipped() and space.name == name and Path(space.path).is_file()
    study, samples = run_study(space, n=12)
    by_name = {p.name: p for p in space.params}
    for trial, sample in zip(study.trials, samples, strict=True):
        base = {**{p.name: p.value for p in space.params if p.type == "fixed"}, **trial.params}
        for p in space.params:
            if not p.active(base):
                assert p.name not in sample, f"{p.name} sampled while inactive"
                continue
            assert p.name in sample
            if p.type == "fixed":
                assert sample[p.name] == p.value
            elif p.type == "categorical":
                assert sample[p.name] in p.choices
            else:
                value = trial.params[p.name]  # what Optuna drew, before scale_by
                assert p.low <= value <= p.high
                assert sample[p.name] == pytest.approx(value * p.factor(base))
        assert set(sample) - set(by_name) == set()


def test_conditional_parameter_follows_its_condition() -> None:
    _, samples = run_study(load_space("smoke"), n=16)
    assert {s["lesion_loss"] for s in samples} == {"ce", "focal"}  # both branches were exercised
    for s in samples:
        assert ("focal_gamma" in s) == (s["lesion_loss"] == "focal")
        if "focal_gamma" in s:
            assert 0.5 <= s["focal_gamma"] <= 4.0


def test_mtl_roles_scale_by_and_conditional_fixed_values() -> None:
    space = load_space("mtl")
    assert space.scientific() == ["loss_weighting", "w_site"]
    assert {"backbone", "lr_backbone", "lr_head", "weight_decay", "focal_gamma"} <= set(space.nuisance())
    assert {"multitask", "w_lesion", "warmup_epochs"} <= set(space.fixed())
    lr = next(p for p in space.params if p.name == "lr_backbone")
    assert lr.log and lr.factor({"backbone": "resnet18"}) == 10.0
    assert lr.factor({"backbone": "tf_efficientnet_lite0"}) == 1.0
    _, samples = run_study(space, n=12)
    for s in samples:
        assert ("pretrained" in s) == (s["backbone"] in ("resnet18", "mobilenetv3_large_100"))
        assert ("w_site" in s) == (s["loss_weighting"] == "fixed")
    single = load_space("single_task", known_keys=KNOWN_KEYS)
    assert single.defaults()["multitask"] is False and "w_site" not in single.defaults()
    assert single.scientific() == []


def test_same_seed_same_samples() -> None:
    space = load_space("mtl")
    assert run_study(space, n=6, seed=3)[1] == run_study(space, n=6, seed=3)[1]
    assert run_study(space, n=6, seed=3)[1] != run_study(space, n=6, seed=4)[1]


def test_defaults_and_warm_start() -> None:
    space = load_space("mtl")
    d = space.defaults()
    assert d["backbone"] == "tf_efficientnet_lite0" and d["lesion_loss"] == "ce" and "focal_gamma" not in d
    assert d["lr_head"] == pytest.approx(1e-3) and d["w_site"] == 1.0 and d["warmup_epochs"] == 1.0
    assert space.warm_start().keys() == {k for k in d if k not in space.fixed()}
    # An enqueued warm start gives exactly the defaults: the point is in Optuna's (unscaled) space.
    study = optuna.create_study()
    study.enqueue_trial(space.warm_start())
    assert define_by_run(space)(study.ask()) == d


def test_define_by_run_pickles() -> None:
    fn = define_by_run(load_space("mtl"))
    clone = pickle.loads(pickle.dumps(fn))
    assert isinstance(clone, DefineByRun) and clone == fn
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert set(clone(trial)) >= {"backbone", "lr_head", "warmup_epochs"}


def test_ray_optuna_search_suggests_without_a_cluster() -> None:
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("mtl")
    search = OptunaSearch(
        space=define_by_run(space), metric="m", mode="max", seed=0, points_to_evaluate=[space.warm_start()]
    )
    assert search.suggest("trial_1") == space.defaults()  # fixed values returned as constants reach the config
    config = search.suggest("trial_2")
    assert config["warmup_epochs"] == 1.0 and config["multitask"] is True
    drawn = search._ot_trials["trial_2"].params  # Optuna holds the base rate, the config the scaled one
    factor = 10.0 if config["backbone"] in ("resnet18", "mobilenetv3_large_100") else 1.0
    assert config["lr_backbone"] == pytest.approx(drawn["lr_backbone"] * factor)
    search.on_trial_complete("trial_1", {"m": 0.5})
    clone = pickle.loads(pickle.dumps(search._space))  # what Tune's experiment checkpoint pickles
    assert clone == search._space


# file -> (key path the message must name, fragment of the message)
BAD_CASES = {
    "syntax.yaml": ("line 3", "invalid YAML"),
    "not_mapping.yaml": ("top level", "must be a mapping"),
    "empty.yaml": ("params", "empty"),
    "unknown_top_key.yaml": ("'sampler'", "unknown top-level key"),
    "unknown_param_key.yaml": ("params.w_site", "unknown key 'hihg' (did you mean 'high'?)"),
    "missing_type.yaml": ("params.w_site", "missing type"),
    "unknown_type.yaml": ("params.w_site.type", "unknown type 'uniform'"),
    "low_gt_high.yaml": ("params.dropout", "low must be <= high (got low=0.5, high=0.1)"),
    "log_low_zero.yaml": ("params.lr_head", "log=true needs low > 0 (got low=0.0)"),
    "log_with_step.yaml": ("params.lr_head", "log=true cannot be combined with step"),
    "step_not_positive.yaml": ("params.warmup_epochs.step", "must be > 0"),
    "step_off_grid.yaml": ("params.rotation", "multiple of step"),
    "int_not_integer.yaml": ("params.batch_size.low", "must be an integer (got 16.5)"),
    "empty_choices.yaml": ("params.backbone.choices", "non-empty list"),
    "duplicate_choices.yaml": ("params.lesion_loss.choices", "duplicate choice 'ce'"),
    "unknown_role.yaml": ("params.w_site.role", "unknown role 'scientifc' (did you mean 'scientific'?)"),
    "missing_role.yaml": ("params.dropout", "missing role"),
    "fixed_without_value.yaml": ("params.epochs", "needs a value"),
    "fixed_with_role.yaml": ("params.epochs.role", "has role fixed"),
    "when_unknown_param.yaml": ("params.focal_gamma.when.lesion_los", "did you mean 'lesion_loss'?"),
    "when_not_categorical.yaml": ("params.focal_gamma.when.w_site", "needs a categorical one"),
    "when_bad_value.yaml": (
        "params.focal_gamma.when.lesion_loss",
        "'fcal' is not one of lesion_loss's choices",
    ),
    "when_defined_later.yaml": ("params.focal_gamma.when.lesion_loss", "must be defined before focal_gamma"),
    "scale_by_bad.yaml": ("params.lr_backbone.scale_by.backbone", "'resnet50' is not one of"),
    "duplicate_param.yaml": ("line 3", "duplicate key 'w_site'"),
    "unknown_name.yaml": ("params.lr_hed", "unknown parameter 'lr_hed' (did you mean 'lr_head'?)"),
    "bad_name.yaml": ("params.optim/lr_head", "letters, digits and '_'"),
}


def test_every_bad_fixture_has_a_case() -> None:
    assert {p.name for p in BAD.glob("*.yaml")} == {*BAD_CASES, "many_problems.yaml"}


@pytest.mark.parametrize("file", sorted(BAD_CASES))
def test_bad_space_raises_one_line_user_error(file: str) -> None:
    key, fragment = BAD_CASES[file]
    with pytest.raises(UserError) as info:
        load_space(BAD / file, known_keys=KNOWN_KEYS)
    message = str(info.value)
    assert isinstance(info.value, SearchSpaceError) and "\n" not in message
    assert file in message and key in message and fragment in message


def test_every_problem_in_a_file_is_reported_together() -> None:
    with pytest.raises(SearchSpaceError) as info:
        load_space(str(BAD / "many_problems.yaml"))
    err = info.value
    assert str(err).startswith(f"search space {BAD / 'many_problems.yaml'} has 5 problems: ")
    assert len(err.problems) == 5 and all(p.startswith(str(BAD / "many_problems.yaml")) for p in err.problems)
    for fragment in ("params.lr_head:", "params.dropout:", "params.lesion_loss.choices:", "params.epochs:"):
        assert fragment in str(err)
    assert "params.w_site.role: unknown role 'scientifc'" in str(err)


def test_unknown_shipped_name_lists_the_shipped_spaces() -> None:
    with pytest.raises(UserError, match=r"'mlt': no such file \(shipped spaces: demo, meta, mtl, single_task, smoke\)"):
        load_space("mlt")


def test_exponent_without_dot_is_read_as_a_number(tmp_path: Path) -> None:
    # PyYAML reads `1e-4` (no dot) as a string; a float bound written that way is still accepted.
    path = tmp_path / "space.yaml"
    path.write_text("params:\n  lr_head: {type: float, low: 1e-4, high: 1e-2, log: true, role: nuisance}\n")
    (param,) = load_space(path).params
    assert (param.low, param.high) == (1e-4, 1e-2)


@pytest.mark.parametrize("name", ["demo", "meta", "mtl", "single_task", "smoke"])
def test_samples_are_valid_train_configs(name: str) -> None:
    from trainables.config import TRAIN_KEYS, parse_train_config

    space = load_space(name, known_keys=TRAIN_KEYS)
    for sample in [space.defaults(), *run_study(space, n=5)[1]]:
        parse_train_config(sample, source=name)


def test_single_task_space_is_mtl_minus_its_scientific_parameters() -> None:
    mtl = load_space("mtl", known_keys=KNOWN_KEYS)
    derived = mtl.single_task()
    # the shipped single-task space was written by hand as exactly this: the same nuisance space, no site task
    by_hand = load_space("single_task", known_keys=KNOWN_KEYS)
    assert {p.name: p for p in derived.params} == {p.name: p for p in by_hand.params}
    assert derived.scientific() == [] and derived.nuisance() == mtl.nuisance()
    assert derived.defaults()["multitask"] is False and "w_site" not in derived.defaults()
    _, samples = run_study(derived, n=8)
    assert all(s["multitask"] is False and not {"w_site", "loss_weighting"} & set(s) for s in samples)
    assert mtl.params == load_space("mtl").params  # the experiment's own space is left as it was


def test_single_task_space_drops_what_depends_on_a_scientific_parameter(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "params:\n"
        "  weighting: {type: categorical, choices: [fixed, learned], role: scientific}\n"
        "  backbone: {type: categorical, choices: [a, b], role: nuisance}\n"
        "  w_site: {type: float, low: 0.0, high: 2.0, role: nuisance, when: {weighting: fixed}}\n"
        "  lr_head: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, role: nuisance,\n"
        "            scale_by: {weighting: {learned: 3.0}, backbone: {b: 10.0}}}\n"
    )
    space = load_space(path)
    derived = space.single_task()
    assert [p.name for p in derived.params] == ["multitask", "backbone", "lr_head"]  # multitask first: not set
    lr = derived.params[-1]
    assert lr.scale_by == (("backbone", (("b", 10.0),)),) and lr.factor({"backbone": "b"}) == 10.0
    assert derived.defaults() == {"multitask": False, "backbone": "a", "lr_head": pytest.approx(1e-3)}
    assert derived.warm_start() == {"backbone": "a", "lr_head": pytest.approx(1e-3)}


def test_meta_space_is_the_single_task_space_plus_the_metadata_branch() -> None:
    """meta.yaml (issue 16's metadata-as-input arm): site, age and sex as inputs, no site head, the single-task
    nuisance space plus the fusion width and the metadata dropout."""
    meta = load_space("meta", known_keys=KNOWN_KEYS)
    single = load_space("single_task", known_keys=KNOWN_KEYS)
    assert set(meta.nuisance()) == set(single.nuisance()) | {"fusion_width", "metadata_dropout"}
    assert meta.scientific() == []
    _, samples = run_study(meta, n=8)
    for s in [meta.defaults(), *samples]:
        assert s["metadata_inputs"] == ["site", "age", "sex"] and s["multitask"] is False
        assert 16 <= s["fusion_width"] <= 128 and 0.0 <= s["metadata_dropout"] <= 0.5
