"""``skintune tune --dry-run``: validate an experiment and its search space, print what the search would do.

Nothing is started and nothing is written: no Ray, no data preparation. The numbers come from what the real run
uses (``tuner.layout``: ``max_concurrent``, ``DRIVER_CPU``, ``tune_dir``; ``load_space``) with the resources Ray
would have: this machine's (as ``init_ray`` would start it), or a cluster-launcher YAML's at its largest
(``--cluster``). What the machine planned from cannot know (the data root, an existing experiment) is a
``warning:`` line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from search_spaces import SearchSpace, load_space
from trainables import storage
from trainables.config import TRAIN_KEYS
from trainables.data.adapters import check_format
from tuner.arms import SINGLE_TASK, arm_space, comparison_arms, search_arms
from tuner.config import ExperimentConfig
from tuner.layout import DRIVER_CPU, min_cluster_cpus, search_concurrency, tune_dir, tune_name, worker_resources


def asha_rungs(max_epochs: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA compares trials (Ray's single bracket: grace * rf**k, as many as below max_t)."""
    count = int(math.log(max_epochs / grace_period) / math.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor**k) for k in range(count)]


def local_resources(min_cpus: int) -> dict:
    """What ``init_ray`` would give a local Ray here: the cores plus one (never below ``min_cpus``), the GPUs."""
    import torch

    return {"CPU": max((os.cpu_count() or 1) + 1, min_cpus), "GPU": torch.cuda.device_count()}


def cluster_resources(path: str | Path) -> tuple[dict, list[dict], str]:
    """A cluster-launcher YAML at its largest (head + every worker type at max_workers): (resources, node
    types, a description)."""
    from tuner.cluster_config import validate_cluster_file

    summary = validate_cluster_file(path)
    nodes = [(summary["head"], 1)] + [(w, w["max_workers"]) for w in summary["workers"]]
    total: dict = {}
    for node, count in nodes:
        for key, value in node["resources"].items():
            total[key] = total.get(key, 0) + value * count
    parts = [f"{count} x {node['label']}" for node, count in nodes if count]
    return total, [node for node, _ in nodes], f"{Path(path).name} at its largest ({' + '.join(parts)})"


def plan(exp: ExperimentConfig, source: str, resume: bool = False, cluster: str | None = None) -> list[str]:
    """The plan's lines (``warning: ...`` for what needs attention); raises UserError for an invalid experiment."""
    space = load_space(exp.search_space, known_keys=TRAIN_KEYS)
    check_format(exp.data.format, exp.data.options)
    lines = [f"plan of experiment {exp.name!r} ({source}): valid; dry run, nothing started or written"]
    warnings: list[str] = []
    lines += _search_rows(exp, space)
    lines += _resource_rows(exp, cluster, warnings)
    lines += _output_rows(exp, resume, warnings)
    return lines + [f"warning: {w}" for w in warnings]


def _search_rows(exp: ExperimentConfig, space: SearchSpace) -> list[str]:
    t = exp.tune
    sampled = [p for p in space.params if p.type != "fixed"]
    roles = {role: sum(p.role == role for p in sampled) for role in ("scientific", "nuisance")}
    rows = [
        f"  search space  {space.name} ({space.path}): {len(sampled)} parameters searched ({roles['scientific']} "
        f"scientific, {roles['nuisance']} nuisance; {sum(bool(p.when) for p in sampled)} conditional), "
        f"{len(space.params) - len(sampled)} fixed; the first trial is the space's defaults"
    ]
    sampler = t.sampler.upper()
    if t.sampler == "tpe":
        sampler += f" ({t.tpe_startup_trials} random trials first, good fraction {t.tpe_good_fraction})"
    rows.append(f"  trials        {t.num_samples}, {sampler}, seed {t.seed}; objective {t.metric} ({t.mode})")
    most = t.num_samples * t.max_epochs
    if t.scheduler == "asha":
        rungs = ", ".join(map(str, asha_rungs(t.max_epochs, t.grace_period, t.reduction_factor)))
        rows.append(
            f"  epochs        up to {t.max_epochs} a trial; ASHA early stopping compares trials at epoch {rungs} "
            f"and keeps the top 1/{t.reduction_factor:g} at each"
        )
        least = t.num_samples * t.grace_period
        spent = f"{least} (every trial stopped at epoch {t.grace_period}) to {most} trial-epochs (none stopped)"
    else:
        rows.append(f"  epochs        {t.max_epochs} a trial, no early stopping")
        spent = f"{most} trial-epochs"
    if t.max_trial_epochs and t.max_trial_epochs < most:
        spent += f"; the search ends at {t.max_trial_epochs} (tune.max_trial_epochs)"
    else:
        spent += "; no tune.max_trial_epochs budget below that"
    rows.append(f"  budget        {spent}")
    arms = comparison_arms(exp)
    others = search_arms(exp)[1:]
    for arm in others:
        arm_space(exp, arm)  # a tuned arm that cannot be derived from this space is refused here, in one line
    if others == (SINGLE_TASK,):
        rows.append(
            f"  baseline      then a single-task search with the same budget ({t.num_samples} trials; this space "
            "minus its scientific parameters), into tune_single_task/ (compare.baseline: tuned)"
        )
    elif others:
        where = ", ".join(f"{arm} into {tune_name(exp, arm)}/" for arm in others)
        rows.append(
            f"  baseline      then one search per other arm with the same budget ({t.num_samples} trials each; this "
            f"space turned into the arm's): {where} (compare.baseline: tuned)"
        )
    elif len(arms) == 2:
        rows.append("  baseline      the ablation: the best configuration with the site head off (compare.baseline)")
    else:
        rows.append(
            f"  baseline      the ablation: each arm ({', '.join(arms)}) is the best configuration with the site "
            "head and the metadata inputs switched to the arm's (compare.baseline)"
        )
    return rows


def _resource_rows(exp: ExperimentConfig, cluster: str | None, warnings: list[str]) -> list[str]:
    tr = exp.train
    share = f" + {tr.gpus_per_worker:g} GPU"
    gpu_note = share if tr.use_gpu is True else f"{share} when there are GPUs (use_gpu: auto)"
    rows = [
        f"  per trial     {_count(tr.workers_per_trial, 'DDP worker')} x ({tr.cpus_per_worker:g} CPU"
        f"{'' if tr.use_gpu is False else gpu_note}) + {DRIVER_CPU} CPU for its driver; batch {tr.batch_size} a worker"
    ]
    nodes: list[dict] = []
    if cluster:
        resources, nodes, where = cluster_resources(cluster)
    elif os.environ.get("RAY_ADDRESS"):
        where = f"the cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
        rows.append(
            f"  concurrency   decided by {where} when the search starts (not asked in a dry run; see --cluster)"
        )
        return rows
    else:
        resources = local_resources(min_cluster_cpus(exp))
        where = f"this machine ({resources['CPU']} CPU slots, {resources['GPU']} GPU)"
    gpu = resources.get("GPU", 0) > 0 if tr.use_gpu == "auto" else bool(tr.use_gpu)
    n = search_concurrency(exp, resources, gpu)
    how = "tune.deterministic" if exp.tune.deterministic else where
    how = "tune.max_concurrent_trials" if exp.tune.max_concurrent_trials else how
    rows.append(f"  concurrency   {_count(n, 'trial')} at once on {how}; trials train on {'GPU' if gpu else 'CPU'}")
    if gpu and not resources.get("GPU", 0):
        warnings.append(
            f"train.use_gpu is true but {where} has no GPU: trials would wait for one; plan for the cluster with "
            "--cluster FILE, or set use_gpu: auto"
        )
    worker = worker_resources(exp, gpu)
    if nodes and not any(all(n["resources"].get(k, 0) >= v for k, v in worker.items()) for n in nodes):
        need = " + ".join(f"{v:g} {k}" for k, v in worker.items())
        warnings.append(
            f"no node type of {cluster} holds one worker ({need}): trials would never start; lower "
            "train.cpus_per_worker or give a node type more"
        )
    return rows


def _output_rows(exp: ExperimentConfig, resume: bool, warnings: list[str]) -> list[str]:
    d, prepared = exp.data, exp.prepared_dir
    options = f" with options {d.options}" if d.options else ""
    rows = [
        f"  data          {d.format} at {d.root}{options}, {d.image_size} px, val {d.val_fraction:g} / test "
        f"{d.test_fraction:g} (seed {d.seed}); prepared into {prepared}"
    ]
    if d.synth is not None:
        rows.append(f"                ({d.synth.n} synthetic images are written to the root first when it is missing)")
    elif not Path(d.root).is_dir():
        later = f"; not read once {prepared} holds the prepared data" if storage.is_uri(prepared) else ""
        warnings.append(
            f"data root {d.root} not found on this machine: `tune` prepares the data from it first, so it must "
            f"exist where the search runs (fine when you plan from another machine){later}"
        )
    rows.append(
        f"  results       {exp.experiment_dir}: experiment.yaml, tune/ (trials, TensorBoard), tune/results.parquet"
    )
    arms = comparison_arms(exp)
    if len(arms) == 2:
        rows.append(
            f"  retrain       {exp.retrain.seeds} seeds of the best configuration and of the single-task baseline"
        )
    else:
        rows.append(
            f"  retrain       {exp.retrain.seeds} seeds of each of {len(arms)} arms ({', '.join(arms)}), each compared "
            "with single_task (Holm over the arms)"
        )
    path = tune_dir(exp)
    if not storage.is_uri(path):  # a URI is not asked in a dry run
        exists = Path(path).exists()
        if exists and not resume:
            warnings.append(
                f"experiment {exp.name!r} exists at {exp.experiment_dir}: `tune` would refuse to overwrite it; "
                "add --resume to continue it"
            )
        if resume and not exists:
            warnings.append(f"--resume: nothing to resume at {path}; run without --resume to start it")
    return rows


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
