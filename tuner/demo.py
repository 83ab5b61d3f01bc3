"""``skintune demo``: the whole pipeline on the synthetic default, one stage after another.

synth -> prepare -> tune -> retrain -> compare -> export, with ``experiments/demo.yaml`` (or
``experiments/smoke.yaml`` with ``--smoke``). Every stage is resumable and skips what is already done, so an
interrupted demo continues where it stopped when run again.

The default demo compares two arms, MTL and single-task. ``--arms all`` compares the four arms of
:mod:`tuner.arms` (``mtl``, ``meta``, ``mtl_meta``, ``single_task``), each an ablation of the one search's best
configuration, as its own experiment (``demo-arms``, or ``smoke-arms`` with ``--smoke``) beside the two-arm one.

The two experiment files are package data (``tuner/experiments/``, links to the top-level ``experiments/`` files
in the source tree, real files in a wheel), so ``skintune demo`` finds them from a regular install too.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from ray import tune

from tuner import commands
from tuner.config import CompareSection, ExperimentConfig, load_experiment

DEMO_FILES = ("demo.yaml", "smoke.yaml")
DEMO_ARMS = ("two", "all")  # --arms: MTL vs single-task (the default), or the four arms


def experiment_file(smoke: bool = False) -> Path:
    """The shipped demo (or smoke) experiment YAML, from the installed package."""
    path = resources.files("tuner") / "experiments" / ("smoke.yaml" if smoke else "demo.yaml")
    return Path(str(path))  # a folder on disk: the package is installed unzipped (setuptools wheels always are)


def demo_experiment(storage: str | None, smoke: bool = False, arms: str = "two") -> ExperimentConfig:
    """The demo (or smoke) experiment; with ``arms="all"`` the four-arm comparison, named ``<name>-arms`` so that
    it does not mix with the two-arm demo's results."""
    exp = load_experiment(experiment_file(smoke), storage=storage)
    if arms not in DEMO_ARMS:
        raise ValueError(f"arms {arms!r}: expected one of {DEMO_ARMS}")
    if arms == "all":
        exp.name = f"{exp.name}-arms"
        exp.compare = CompareSection(**{**exp.compare.model_dump(), "arms": "all"})  # validated: the four arms
    return exp


def demo_plan(storage: str | None, smoke: bool = False, arms: str = "two") -> list[str]:
    """``skintune demo --dry-run``: the demo experiment's plan (as ``tune --dry-run`` prints it); runs nothing."""
    from tuner.plan import plan

    source = str(experiment_file(smoke)) + (" with compare.arms: all (--arms all)" if arms == "all" else "")
    return plan(demo_experiment(storage, smoke, arms), source)


def _stage(n: int, total: int, text: str) -> float:
    print(f"\n=== [{n}/{total}] {text} ===", flush=True)
    return time.perf_counter()


def _tune(exp: ExperimentConfig) -> None:
    from tuner.layout import search_arms, tune_dir
    from tuner.tune_run import run_tune

    if all(Path(tune_dir(exp, arm), "results.parquet").exists() for arm in search_arms(exp)):  # every search
        print("tune: finished earlier; kept")
        return
    run_tune(exp, resume=tune.Tuner.can_restore(tune_dir(exp)))


def run_demo(storage: str | None, smoke: bool = False, arms: str = "two") -> dict:
    """Run every stage; returns the paths of the report and the exported model."""
    from tuner.arms import comparison_arms
    from tuner.data_step import ensure_data
    from tuner.export import export_model
    from tuner.report.build import build_report
    from tuner.retrain import run_retrain

    started = time.perf_counter()
    exp = demo_experiment(storage, smoke, arms)
    total = 5
    assert exp.data.synth is not None  # demo.yaml and smoke.yaml synthesise their data
    _stage(1, total, f"synthesise {exp.data.synth.n} images and prepare shards ({exp.data.root})")
    ensure_data(exp)
    _stage(
        2,
        total,
        f"tune: {exp.tune.num_samples} trials, {exp.tune.sampler.upper()} + ASHA, "
        f"up to {exp.tune.max_epochs} epochs each",
    )
    _tune(exp)
    compared = comparison_arms(exp)
    if len(compared) == 2:
        _stage(3, total, f"retrain the best configuration and the single-task baseline, {exp.retrain.seeds} seeds")
    else:
        names = ", ".join(compared)
        _stage(3, total, f"retrain {len(compared)} arms ({names}), {exp.retrain.seeds} seeds each")
    run_retrain(exp)
    flags = [*(["--smoke"] if smoke else []), *(["--arms", arms] if arms != "two" else [])]
    commands.record(exp.experiment_dir, ["demo", *flags, "--storage", exp.storage])
    _stage(4, total, "compare: paired statistics and the report")
    report = build_report(exp.experiment_dir)
    _stage(5, total, "export the best model")
    export_dir = Path(exp.experiment_dir, "export")
    export_model(exp.experiment_dir, str(export_dir))
    minutes = (time.perf_counter() - started) / 60
    print(f"\ndemo finished in {minutes:.1f} min")
    print(f"  report:       {report}")
    print(f"  model:        {export_dir}")
    print(f"  TensorBoard:  skintune tensorboard --storage {exp.storage} --experiment {exp.name}")
    print(f"  predict:      skintune predict --model {export_dir} {exp.data.root}/ISIC_2019_Training_Input/*.jpg")
    return {"report": str(report), "export": str(export_dir), "experiment_dir": exp.experiment_dir}
