"""The Ray Train worker function: DDP training of the two-head model, one ``ray.train.report`` per epoch.

Runs on every Train worker (gloo on CPU, NCCL on GPU), for ``skintune train``, for every Tune trial and for every
retrain seed. Plain PyTorch in fixed phases: set LR (per step), train epoch, evaluate, checkpoint, report.
Resumes from ``ray.train.get_checkpoint()``; a non-finite loss ends the run with ``diverged = 1`` and the worst
finite metric values (never a NaN to the searcher). GPU-only paths (bf16 autocast, channels_last, pinned memory,
non-blocking copies, ``gpu_decode``: nvJPEG decoding and augmentation on the GPU) are guarded by the device type, so
the CPU path is the one the tests run (``gpu_decode``'s loader is also tested on the CPU device).
A network with ``metadata_inputs`` gets each batch's raw patient codes, every field blanked with probability
``metadata_dropout`` by a generator of (seed, rank, epoch) (:func:`trainables.metadata.blank_metadata`); evaluation
passes them as recorded.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import get_device, prepare_data_loader, prepare_model
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from trainables import storage
from trainables.checkpoint import load_meta, load_train_state, load_weights, save_checkpoint, unwrap
from trainables.config import TrainConfig, parse_train_config
from trainables.data.loader import DeviceDecoded, ShardDataset, batched, collate_encoded
from trainables.data.prepare import load_info
from trainables.evaluate import predict, rank_slice, split_metrics
from trainables.factory import ModelParts, build_parts
from trainables.metadata import blank_metadata, blanking_generator
from trainables.model import MultiTaskNet, param_groups
from trainables.tensorboard import confusion_figure, drop_stale_events, log_config, log_hparams, open_writer

DIVERGED_LOSS = 1.0e6  # what a diverged run reports for its losses: finite, and worse than any real run


@dataclass
class Run:
    """Everything the loop needs, built once by :func:`setup`."""

    cfg: TrainConfig
    info: dict
    device: torch.device
    rank: int
    world: int
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader | DeviceDecoded
    val_loader: DataLoader | DeviceDecoded
    writer: Any  # a SummaryWriter on rank 0 (or an UploadingWriter around one), a NullWriter on the others
    autocast: Callable[[], AbstractContextManager] | None  # a context-manager factory, or None on CPU


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _loaders(
    cfg: TrainConfig, prepared: str, parts: ModelParts, rank: int, world: int, on_gpu: bool, decode_on=None
) -> tuple[DataLoader | DeviceDecoded, DataLoader | DeviceDecoded]:
    """The train and val loaders of this rank, with the transforms of ``parts``. With ``decode_on`` (a device:
    ``train.gpu_decode`` on a GPU) their batches are decoded and transformed on that device
    (:class:`DeviceDecoded`), not in the loader workers."""
    train_tf, val_tf = parts.train_transform(), parts.eval_transform
    encoded = decode_on is not None
    meta = bool(parts.metadata_inputs)  # items carry the raw metadata codes only for a network that takes them
    train_set = ShardDataset(
        prepared, "train", None if encoded else train_tf, limit=cfg.limit_train, encoded=encoded, with_meta=meta
    )
    val_set = ShardDataset(prepared, "val", None if encoded else val_tf, encoded=encoded, with_meta=meta)
    common: dict[str, Any] = dict(
        num_workers=cfg.loader_workers, pin_memory=on_gpu, persistent_workers=cfg.loader_workers > 0
    )
    if encoded:
        common["collate_fn"] = collate_encoded
    # Our own DistributedSampler (seeded by the run's seed); prepare_data_loader then only moves batches to device.
    sampler: DistributedSampler[int] = DistributedSampler(
        train_set,
        num_replicas=world,
        rank=rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=len(train_set) >= 2 * world * cfg.batch_size,
    )
    # a ragged last batch is dropped, unless a rank holds less than one batch (tiny data): then it is all there is
    train = DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=len(sampler) > cfg.batch_size, **common
    )
    val = DataLoader(rank_slice(val_set, rank, world), batch_size=2 * cfg.batch_size, **common)
    if encoded:
        return DeviceDecoded(train, batched(train_tf), decode_on), DeviceDecoded(val, val_tf, decode_on)
    return prepare_data_loader(train, add_dist_sampler=False), val


def setup(cfg: TrainConfig, rank: int, world: int) -> Run:
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    device = get_device()
    on_gpu = device.type == "cuda"
    prepared = storage.local_dir(cfg.prepared)  # a node-local copy when the shards are on cloud storage
    info = load_info(prepared)
    parts = build_parts(cfg, info, pretrained_weights=True, with_loss=True)
    model: torch.nn.Module = parts.model
    weights_source = parts.model.weights_source
    if on_gpu and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = prepare_model(model)
    if cfg.compile:
        model = cast(torch.nn.Module, torch.compile(model))  # an OptimizedModule (torch types it as a callable)
    torch.manual_seed(cfg.seed + rank)  # augmentation randomness differs per rank
    assert parts.loss is not None  # built with_loss
    loss_fn = parts.loss.to(device)
    groups = param_groups(cast(MultiTaskNet, unwrap(model)), cfg.lr_backbone, cfg.lr_head, cfg.weight_decay)
    if any(True for _ in loss_fn.parameters()):  # learned uncertainty weights train with the heads
        groups.append({"params": list(loss_fn.parameters()), "lr": cfg.lr_head, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    decode_on = device if (on_gpu and cfg.gpu_decode) else None
    train_loader, val_loader = _loaders(cfg, prepared, parts, rank, world, on_gpu, decode_on)
    steps = max(1, len(train_loader))
    schedule = functools.partial(
        lr_factor, warmup_steps=round(cfg.warmup_epochs * steps), total_steps=cfg.epochs * steps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    writer = open_writer(cfg.tensorboard_dir, rank)
    log_config(writer, cfg.model_dump(), weights_source)
    autocast = (
        functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16) if (on_gpu and cfg.amp != "off") else None
    )
    return Run(
        cfg,
        info,
        device,
        rank,
        world,
        model,
        loss_fn,
        optimizer,
        scheduler,
        train_loader,
        val_loader,
        writer,
        autocast,
    )


def _all_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def average_loss_grads(loss_fn: torch.nn.Module, world: int) -> None:
    """Average the gradients of the loss's own parameters (the learned task weights) over the ranks.

    DDP averages the gradients of the module it wraps, the model; the loss sits outside it, so without this each
    rank would step its task weights on its own batch and the ranks' copies would drift apart. One all-reduce per
    step, in the same step: every rank then holds the same weights, and only rank 0's are checkpointed."""
    grads = [p.grad for p in loss_fn.parameters() if p.grad is not None]
    if world < 2 or not grads or not (dist.is_available() and dist.is_initialized()):
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def train_epoch(run: Run, epoch: int, on_first_step=None) -> dict:
    run.model.train()
    sampler = cast(DistributedSampler, run.train_loader.sampler)  # the one _loaders made
    sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, lesion, site, images
    steps = len(run.train_loader)
    fields = run.cfg.metadata_inputs
    # metadata blanking: its own generator, a function of (seed, rank, epoch), so the global RNG is untouched
    blanking = blanking_generator(run.cfg.seed, run.rank, epoch) if fields else None
    for i, (images, lesion, site, *meta) in enumerate(run.train_loader):
        if on_first_step is not None and i == 0:
            on_first_step()
        if run.device.type == "cuda" and run.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        inputs: tuple[torch.Tensor, ...] = (images,)
        if blanking is not None and meta:  # each field set missing with probability metadata_dropout
            inputs = (images, blank_metadata(meta[0], fields, run.cfg.metadata_dropout, blanking))
        with run.autocast() if run.autocast else contextlib.nullcontext():
            lesion_logits, site_logits = run.model(*inputs)
        out = run.loss_fn(lesion_logits.float(), None if site_logits is None else site_logits.float(), lesion, site)
        run.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        average_loss_grads(run.loss_fn, run.world)
        if run.cfg.grad_clip > 0:  # the model's and the loss's parameters, clipped together
            torch.nn.utils.clip_grad_norm_([*run.model.parameters(), *run.loss_fn.parameters()], run.cfg.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        n = len(lesion)
        values = [float(out[k].detach()) for k in ("loss", "loss_lesion", "loss_site")]
        for k, v in enumerate(values):
            sums[k] += v * n
        sums[3] += n
        step = epoch * steps + i
        for name, v in zip(("train/loss", "train/loss_lesion", "train/loss_site"), values, strict=True):
            run.writer.add_scalar(name, v, step)
        run.writer.add_scalar("lr", run.scheduler.get_last_lr()[0], step)
    total = _all_sum(sums, run.device)
    images_seen = max(total[3], 1.0)
    return {
        "train/loss": total[0] / images_seen,
        "train/loss_lesion": total[1] / images_seen,
        "train/loss_site": total[2] / images_seen,
        "lr": run.scheduler.get_last_lr()[0],
    }


def diverged_metrics(train: dict, lesion_classes: list[str], multitask: bool) -> dict:
    """Worst finite values for every metric of a diverged run."""
    metrics = {k: DIVERGED_LOSS for k in train if k.endswith("loss") or "/loss_" in k}
    metrics.update({"val/loss": DIVERGED_LOSS, "val/lesion_bacc": 0.0, "val/lesion_auc": 0.0, "val/lesion_acc": 0.0})
    metrics.update({f"val/recall/{c}": 0.0 for c in lesion_classes})
    if multitask:
        metrics.update({"val/site_acc": 0.0, "val/site_bacc": 0.0})
    return metrics


def _resume(run: Run) -> tuple[int, dict]:
    """Load the latest checkpoint, if any: returns the first epoch still to run and the last metrics."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, {}
    with checkpoint.as_directory() as directory:
        load_weights(directory, run.model)
        state = load_train_state(directory)
        meta = load_meta(directory)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.loss_fn.load_state_dict(state["loss"])
    return int(state["epoch"]) + 1, meta["metrics"]


def _report(run: Run, metrics: dict, epoch: int) -> None:
    state = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "loss": run.loss_fn.state_dict(),
        "epoch": epoch,
    }
    meta = {
        "config": run.cfg.model_dump(),
        "epoch": epoch,
        "metrics": metrics,
        "lesion_classes": run.info["lesion_classes"],
        "site_classes": run.info["site_classes"],
        "weights_source": unwrap(run.model).weights_source,
        "dataset_fingerprint": run.info["fingerprint"],
    }
    with tempfile.TemporaryDirectory(prefix="skintune-ckpt-") as tmp:
        checkpoint = None
        if run.rank == 0:
            checkpoint = ray.train.Checkpoint.from_directory(str(save_checkpoint(tmp, run.model, state, meta)))
        ray.train.report(metrics, checkpoint=checkpoint)


def train_worker(config: dict) -> None:
    """Entry point of every Train worker; ``config`` is a plain dict of :class:`TrainConfig` fields."""
    wall_start = time.time()
    cfg = parse_train_config(config)
    ctx = ray.train.get_context()
    run = setup(cfg, ctx.get_world_rank(), ctx.get_world_size())
    start_epoch, metrics = _resume(run)
    if run.rank == 0:  # a restart trains epochs from start_epoch again: drop what an interrupted start logged
        drop_stale_events(cfg.tensorboard_dir, start_epoch, len(run.train_loader), run.writer)
    if start_epoch > 0:
        # a restart reports the restored epoch again: Tune may not have logged it before a kill (it saves its state
        # only every ~10 s); Tune's loggers keep one row per epoch (tuner/tune_callbacks.py, LoggedEpochs)
        ray.train.report(metrics)
    if start_epoch >= cfg.epochs or metrics.get("diverged"):
        return  # finished (or diverged) before the restart
    first_step: dict = {}
    classes = run.info["lesion_classes"]
    for epoch in range(start_epoch, cfg.epochs):
        # -- train one epoch (the LR is set per step by the scheduler)
        epoch_start = time.perf_counter()
        train = train_epoch(run, epoch, lambda: first_step.setdefault("at", time.time()))
        epoch_s = time.perf_counter() - epoch_start
        # -- a non-finite loss ends the run, reported with finite worst values
        if not all(math.isfinite(v) for v in train.values()):
            metrics = {
                **diverged_metrics(train, classes, cfg.multitask),
                "epoch": epoch + 1,
                "diverged": 1.0,
                "lr": train["lr"] if math.isfinite(train["lr"]) else 0.0,
            }
            run.writer.add_text("diverged", f"non-finite training loss in epoch {epoch + 1}; run stopped", epoch)
            _report(run, metrics, epoch)  # checkpointed too: a restart sees the verdict, and it ranks last
            break
        # -- evaluate on the whole validation split (gathered across ranks)
        pred = predict(run.model, run.val_loader, run.loss_fn, run.device, run.rank, run.world, run.autocast)
        val, cm = split_metrics(pred, classes, "val")
        metrics = {
            **train,
            **val,
            "epoch": epoch + 1,
            "diverged": 0.0,
            "epoch_s": epoch_s,  # the training part of the epoch (benchmarks compare it with a plain loop)
            "first_step_s": first_step.get("at", wall_start) - wall_start,  # worker start-up: setup, data, model
            "first_step_at": first_step.get("at", 0.0),  # unix time, for a driver-side start-up measurement
        }
        for name, value in val.items():
            run.writer.add_scalar(name, value, epoch + 1)
        if run.rank == 0:
            run.writer.add_figure(
                "val/confusion_matrix", confusion_figure(cm, classes, f"epoch {epoch + 1}"), epoch + 1
            )
        run.writer.flush()  # visible in TensorBoard now (and uploaded, on cloud storage)
        # -- checkpoint (rank 0) and report (every rank: it is a barrier)
        _report(run, metrics, epoch)
    log_hparams(run.writer, cfg.model_dump(), metrics)
    run.writer.close()
