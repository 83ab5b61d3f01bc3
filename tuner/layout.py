"""Where an experiment's outputs live and how many of its runs the cluster holds at once.

Layout under ``<storage>/<experiment>/`` (a folder or a URI)::

    experiment.yaml          the resolved experiment config (tuner/tune_run.py)
    prepared/                the prepared data, unless ``data.prepared`` names another place (tuner/data_step.py)
    tune/                    Tune's experiment dir; tune/<trial>/ holds Tune's and the workers' TensorBoard events
    tune/runs/<trial_id>/    each trial's Ray Train run: checkpoints (best ``keep_checkpoints`` by the objective)
    tune/results.parquet|csv one row per trial (tuner/results.py)
    tune/search.json         the search's budget, data fingerprint and what it spent (tuner/results.py)
    tune_<arm>/              the same for each other arm's search (``compare: {baseline: tuned}``; tuner/arms.py),
                             e.g. tune_single_task/ for the single-task baseline
    retrain/                 the retrained arms x seeds (tuner/retrain.py)
    report/                  the comparison report (tuner/report/)
"""

from __future__ import annotations

import math

from trainables import storage
from tuner import arms
from tuner.config import ExperimentConfig

DRIVER_CPU = 0.25  # a trial's (or a retrain run's) driver only waits on its workers


MTL, SINGLE_TASK = arms.MTL, arms.SINGLE_TASK  # (kept here for callers from before named arms)
search_arms = arms.search_arms


def search_title(exp: ExperimentConfig, arm: str | None = None) -> str:
    """What the console and the report call one of the experiment's searches: ``MTL search`` (or the arm its
    space describes: ``metadata input search``), ``single-task baseline search``, ``MTL + metadata search``."""
    if arm is None or arm == arms.primary_arm(exp):
        return f"{arms.label(arm or arms.primary_arm(exp))} search"
    return "single-task baseline search" if arm == SINGLE_TASK else f"{arms.label(arm)} search"


def tune_name(exp: ExperimentConfig, arm: str | None = None) -> str:
    """The folder (and Tune experiment name) of a search: ``tune`` for the experiment's own (``arm`` None or the
    arm its space describes), ``tune_<arm>`` for another tuned arm's."""
    return "tune" if arms.is_primary(exp, arm) else f"tune_{arm}"


def tune_dir(exp: ExperimentConfig, arm: str | None = None) -> str:
    return storage.join(exp.experiment_dir, tune_name(exp, arm))


def runs_dir(exp: ExperimentConfig, arm: str | None = None) -> str:
    return storage.join(tune_dir(exp, arm), "runs")


def retrain_dir(exp: ExperimentConfig) -> str:
    return storage.join(exp.experiment_dir, "retrain")


def run_cpus(exp: ExperimentConfig) -> float:
    """The CPUs one run takes: its workers plus its driver's fraction."""
    return exp.train.workers_per_trial * exp.train.cpus_per_worker + DRIVER_CPU


def worker_resources(exp: ExperimentConfig, use_gpu: bool) -> dict[str, float]:
    """What one Ray Train worker asks for (``ScalingConfig.resources_per_worker``): ``train.cpus_per_worker``
    CPUs, and on GPUs ``train.gpus_per_worker`` of them (a fraction packs several workers onto one GPU)."""
    t = exp.train
    return {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if use_gpu else {})}


def gpu_worker_slots(gpus: float, gpus_per_worker: float) -> int:
    """How many workers of ``gpus_per_worker`` GPUs each ``gpus`` GPUs hold: a fraction shares one GPU
    (floor(1 / fraction) workers on each whole GPU: 0.3 fits 3, never a worker split across two GPUs), a whole
    number takes that many GPUs per worker."""
    eps = 1e-9  # 0.1 + 0.2 and friends: Ray counts resources in units of 1e-4, exactly
    if gpus_per_worker <= 1.0:
        return math.floor(gpus + eps) * math.floor(1.0 / gpus_per_worker + eps)
    return math.floor(gpus / gpus_per_worker + eps)


def min_cluster_cpus(exp: ExperimentConfig) -> int:
    """The fewest CPUs a cluster needs to run one trial (or retrain run) at all."""
    return math.ceil(run_cpus(exp))


def max_concurrent(exp: ExperimentConfig, resources: dict, use_gpu: bool) -> int:
    """How many trials the cluster holds at once: each needs its workers plus a driver fraction, and on GPUs
    ``workers_per_trial`` x ``gpus_per_worker`` GPUs (so 0.25 runs four one-worker trials on each GPU)."""
    if exp.tune.max_concurrent_trials:
        return exp.tune.max_concurrent_trials
    t = exp.train
    fits = [resources.get("CPU", 1) // run_cpus(exp)]
    if use_gpu:
        fits.append(gpu_worker_slots(resources.get("GPU", 0), t.gpus_per_worker) // t.workers_per_trial)
    return max(1, int(min(fits)))


def search_concurrency(exp: ExperimentConfig, resources: dict, use_gpu: bool) -> int:
    """How many trials of a search run at once: one with ``tune.deterministic`` (each suggestion and each early
    stop then sees every earlier trial's results, in the same order on any machine), else :func:`max_concurrent`."""
    return 1 if exp.tune.deterministic else max_concurrent(exp, resources, use_gpu)
