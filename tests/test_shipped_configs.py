"""Every shipped configuration validates: each search space file in ``search_spaces/`` (found on disk, so a new one
is covered too) and the trial configurations each shipped experiment's searches would start.

``tests/tuner/test_dry_run.py`` already loads every ``experiments/*.yaml`` (``load_experiment``) and validates its
search space (``skintune tune --dry-run``); here the experiment's ``train:`` section is merged with its spaces'
samples as a trial gets them (``tuner.tune_run.trial_driver``) and checked as a ``TrainConfig``."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search_spaces import define_by_run, load_space, shipped
from trainables.config import TRAIN_KEYS, parse_train_config
from tuner.config import load_experiment
from tuner.layout import search_arms
from tuner.searcher import arm_space

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


def _samples(space, n: int = 6) -> list[dict]:
    """The space's defaults (every search's first trial) and ``n`` random draws from a real Optuna study."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn, samples = define_by_run(space), [space.defaults()]
    for _ in range(n):
        samples.append(fn(study.ask()))
    return samples


def test_the_configs_are_found():
    assert {p.stem for p in SPACES} == set(shipped()) >= {"demo", "mtl", "single_task", "smoke"}
    assert {p.name for p in EXPERIMENTS} >= {"demo.yaml", "smoke.yaml", "isic2019.yaml", "ham10000.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_shipped_search_space_validates_against_the_train_config(path: Path):
    # by name, as an experiment's `search_space:` names it, with the keys `skintune tune` checks it against
    space = load_space(path.stem, known_keys=TRAIN_KEYS)
    assert Path(space.path).resolve() == path.resolve() and space.params
    derived = [space, space.single_task()] if space.scientific() else [space]  # tuned baseline's space too
    for s in derived:
        for sample in _samples(s):
            parse_train_config(sample, source=f"{path.name} ({s.name})")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_experiment_starts_valid_trials(path: Path):
    exp = load_experiment(path)
    for arm in search_arms(exp):
        space = arm_space(exp, arm)
        for sample in _samples(space):
            config = {**exp.train.train_config(), **sample, "epochs": exp.tune.max_epochs}
            cfg = parse_train_config(config, source=f"{path.name} ({arm} search)")
            assert cfg.epochs == exp.tune.max_epochs
