"""The Ray Train worker loop on a real local Ray: DDP, checkpoints, resume, seeding, divergence, TensorBoard."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import ray.train
import torch
import torch.distributed as dist
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainables.checkpoint import load_meta, load_train_state, load_weights, unwrap
from trainables.config import parse_train_config
from trainables.data.prepare import load_info
from trainables.factory import build_parts
from trainables.train_loop import diverged_metrics, lr_factor, setup, train_epoch
from tuner.train_run import run_train

pytestmark = pytest.mark.ray


WEIGHTINGS = ("fixed", "uncertainty")


def _ddp_probe(config: dict) -> None:
    """Per loss weighting: one epoch through the real setup/train_epoch, then compare the ranks' weights and data.
    (Both weightings in one worker group: each gets its own setup, model, loss and optimizer.)"""
    ctx = ray.train.get_context()
    metrics = {}
    for weighting in WEIGHTINGS:
        cfg = parse_train_config({**config, "loss_weighting": weighting})
        run = setup(cfg, ctx.get_world_rank(), ctx.get_world_size())
        run.train_loader.sampler.set_epoch(0)
        seen = list(iter(run.train_loader.sampler))
        train_epoch(run, 0)
        # every trainable parameter: the model's and the loss's (the learned task weights with `uncertainty`)
        trainable = [p for p in (*unwrap(run.model).parameters(), *run.loss_fn.parameters()) if p.requires_grad]
        flat = torch.cat([p.detach().flatten() for p in trainable])
        loss_params = torch.cat([p.detach().flatten() for p in run.loss_fn.parameters()] or [torch.zeros(0)])
        weights = [torch.zeros_like(flat) for _ in range(ctx.get_world_size())]
        dist.all_gather(weights, flat)
        indices: list = [None] * ctx.get_world_size()
        dist.all_gather_object(indices, seen)
        found = {
            "max_weight_diff": max(float((w - weights[0]).abs().max()) for w in weights),
            "weights_moved": float((flat - flat.new_tensor(0)).abs().sum()),
            "loss_params": len(loss_params),
            "loss_params_moved": float(loss_params.abs().sum()),  # log-variances start at 0
            "shared_indices": len(set(indices[0]) & set(indices[1])),
            "indices_per_rank": len(indices[0]),
        }
        metrics.update({f"{weighting}/{key}": value for key, value in found.items()})
    with tempfile.TemporaryDirectory() as tmp:  # Train V2 keeps metrics with checkpoints only
        Path(tmp, "probe.txt").write_text("probe")
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if ctx.get_world_rank() == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def ddp_probe(ray_cluster, make_module_experiment, tmp_path_factory) -> dict:
    """One 2-worker TorchTrainer run of _ddp_probe: its metrics for every weighting."""
    exp = make_module_experiment()
    config = {**exp.train.train_config(), "prepared": exp.prepared_dir}
    trainer = TorchTrainer(
        _ddp_probe,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="ddp", storage_path=str(tmp_path_factory.mktemp("ddp"))),
    )
    result = trainer.fit()
    assert result.error is None
    return result.metrics


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_two_ddp_workers_hold_identical_weights_on_disjoint_data(ddp_probe, weighting):
    m = {key.split("/", 1)[1]: value for key, value in ddp_probe.items() if key.startswith(f"{weighting}/")}
    assert m["max_weight_diff"] == 0.0  # model and loss parameters alike, on both ranks
    assert m["weights_moved"] > 0
    assert m["loss_params"] == (2 if weighting == "uncertainty" else 0)
    assert (m["loss_params_moved"] > 0) == (weighting == "uncertainty")
    assert m["shared_indices"] == 0 and m["indices_per_rank"] > 10


def _events(logdir: str) -> EventAccumulator:
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def first_run(ray_cluster, make_module_experiment):
    """One epoch of the smoke experiment on 1 worker, seed 0 (the default): (its experiment, Ray Train's Result).
    Resumed by the checkpoint test, compared with more runs by the seed test."""
    exp = make_module_experiment("resume", train={"workers_per_trial": 1, "epochs": 1})
    return exp, run_train(exp, name="run")


def test_train_checkpoints_logs_and_resumes_with_optimizer_state(first_run, make_module_experiment):
    exp, first = first_run
    assert first.error is None
    m = first.metrics
    for key in (
        "train/loss",
        "train/loss_lesion",
        "train/loss_site",
        "val/loss",
        "val/lesion_bacc",
        "val/lesion_auc",
        "val/lesion_acc",
        "val/site_acc",
        "val/site_bacc",
        "epoch",
        "lr",
    ):
        assert key in m and math.isfinite(m[key]), key
    assert any(k.startswith("val/recall/") for k in m)
    assert m["epoch"] == 1 and m["diverged"] == 0.0
    meta = load_meta(first.checkpoint.path)
    assert meta["epoch"] == 0 and meta["lesion_classes"][:2] == ["MEL", "NV"]
    assert meta["weights_source"] == "none (random init)"
    steps = load_train_state(first.checkpoint.path)["scheduler"]["last_epoch"]
    assert steps > 0

    # TensorBoard events written by rank 0, read back with TensorBoard's own reader
    acc = _events(str(Path(exp.experiment_dir, "run", "tensorboard")))
    tags = acc.Tags()
    assert {"train/loss", "train/loss_site", "lr", "val/lesion_bacc", "val/site_acc"} <= set(tags["scalars"])
    assert len(acc.Scalars("train/loss")) == steps  # one point per step
    assert acc.Scalars("val/lesion_bacc")[0].value == pytest.approx(m["val/lesion_bacc"], abs=1e-6)
    assert "val/confusion_matrix" in tags["images"]
    assert any("config" in t for t in tags["tensors"])

    # same run name, more epochs: resumes at epoch 2 with the optimizer's and scheduler's state
    more = make_module_experiment("resume", train={"workers_per_trial": 1, "epochs": 2})
    second = run_train(more, name="run")
    assert second.error is None and second.metrics["epoch"] == 2
    state = load_train_state(second.checkpoint.path)
    assert state["epoch"] == 1
    assert state["scheduler"]["last_epoch"] == 2 * steps
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {2.0 * steps}  # a fresh optimizer would have counted `steps` only


def test_same_seed_same_first_epoch_loss(first_run, make_experiment):
    exp, first = first_run
    assert exp.train.seed == 0
    losses = [first.metrics["train/loss"]]  # seed 0
    for name, seed in (("b", 0), ("c", 1)):
        exp = make_experiment(f"seed-{name}", train={"workers_per_trial": 1, "epochs": 1, "seed": seed})
        result = run_train(exp, name="run")
        losses.append(result.metrics["train/loss"])
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_diverging_run_stops_with_finite_worst_metrics(ray_cluster, make_experiment):
    exp = make_experiment(
        "diverge",
        train={
            "workers_per_trial": 1,
            "epochs": 3,
            "lr_head": 1.0e8,
            "lr_backbone": 1.0e8,
            "grad_clip": 0.0,
            "warmup_epochs": 0,
        },
    )
    result = run_train(exp, name="run")
    assert result.error is None
    m = result.metrics
    assert m["diverged"] == 1.0 and m["epoch"] < 3
    assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))
    assert m["val/lesion_bacc"] == 0.0


def test_lr_schedule_and_diverged_metrics_helpers():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)
    worst = diverged_metrics({"train/loss": math.nan, "train/loss_site": math.inf}, ["A", "B"], multitask=False)
    assert worst["train/loss"] == worst["val/loss"] == 1e6
    assert worst["val/recall/B"] == 0.0 and "val/site_acc" not in worst


def test_metadata_model_trains_on_two_gloo_workers_and_resumes(ray_cluster, make_experiment):
    """A network with metadata inputs (site, age, sex; blanked at training) trains with DDP on 2 workers, its
    checkpoint holds the trained metadata branch, and a longer run resumes from it with the optimizer's state."""
    train = {"workers_per_trial": 2, "epochs": 1, "metadata_inputs": ["site", "age", "sex"], "fusion_width": 8}
    train["metadata_dropout"] = 0.5
    first = run_train(make_experiment("meta", train=train), name="run")
    assert first.error is None and first.metrics["epoch"] == 1 and first.metrics["diverged"] == 0.0
    assert math.isfinite(first.metrics["val/lesion_bacc"]) and math.isfinite(first.metrics["val/site_acc"])
    meta = load_meta(first.checkpoint.path)
    cfg = parse_train_config(meta["config"])
    assert cfg.metadata_inputs == ["site", "age", "sex"] and cfg.metadata_dropout == 0.5

    torch.manual_seed(cfg.seed)  # the run's initial weights (setup seeds the same way)
    parts = build_parts(cfg, load_info(cfg.prepared))
    initial = {k: v.clone() for k, v in parts.model.state_dict().items()}
    load_weights(first.checkpoint.path, parts.model)  # strict: the checkpoint is the metadata network's
    branch = [k for k in initial if k.startswith("metadata_mlp.")]
    assert branch and all(not torch.equal(initial[k], parts.model.state_dict()[k]) for k in branch)  # trained
    steps = load_train_state(first.checkpoint.path)["scheduler"]["last_epoch"]

    second = run_train(make_experiment("meta", train={**train, "epochs": 2}), name="run")
    assert second.error is None and second.metrics["epoch"] == 2
    state = load_train_state(second.checkpoint.path)
    assert state["epoch"] == 1 and state["scheduler"]["last_epoch"] == 2 * steps
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {2.0 * steps}
