"""``skintune train``: one ``TorchTrainer`` fit of the experiment's base configuration, without Tune.

:func:`make_trainer` is shared with tuning (each trial's driver builds one) and retraining, so every run uses the
same worker function, scaling and checkpoint policy.
"""

from __future__ import annotations

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from trainables import storage
from trainables.train_loop import train_worker
from tuner.config import ExperimentConfig
from tuner.layout import worker_resources


def make_trainer(
    train_config: dict,
    exp: ExperimentConfig,
    name: str,
    storage_path: str,
    use_gpu: bool,
    callbacks: list | None = None,
) -> TorchTrainer:
    """A TorchTrainer named ``name`` (a reused name resumes that run: callers pass unique ones)."""
    t = exp.train
    return TorchTrainer(
        train_worker,
        train_loop_config=train_config,
        scaling_config=ScalingConfig(
            num_workers=t.workers_per_trial,
            use_gpu=use_gpu,
            resources_per_worker=worker_resources(exp, use_gpu),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks or [],
            checkpoint_config=CheckpointConfig(
                num_to_keep=exp.tune.keep_checkpoints,
                checkpoint_score_attribute=exp.tune.metric,
                checkpoint_score_order=exp.tune.mode,
            ),
            failure_config=FailureConfig(max_failures=exp.tune.worker_max_failures),
        ),
    )


def run_train(exp: ExperimentConfig, name: str = "train"):
    """Prepare the data if needed, then fit the base configuration once; returns Ray Train's Result."""
    from tuner.data_step import ensure_data
    from tuner.ray_runtime import init_ray, use_gpu

    prepared = ensure_data(exp)
    init_ray(min_cpus=exp.train.workers_per_trial, log_dir=exp.experiment_dir)
    config = {
        **exp.train.train_config(),
        "prepared": prepared,
        "tensorboard_dir": storage.join(exp.experiment_dir, name, "tensorboard"),
    }
    trainer = make_trainer(config, exp, name, exp.experiment_dir, use_gpu(exp.train.use_gpu))
    return trainer.fit()
