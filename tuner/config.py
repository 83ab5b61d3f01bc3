"""The experiment YAML (README, "Configuration"): typed once at the edge, every error reported together.

Relative paths in the YAML (``data.root``, ``data.prepared``, ``storage``) are relative to the current working
directory; ``~`` is expanded. ``storage`` may also be a URI (``s3://bucket/prefix``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables import storage as storage_io  # `storage` is a field and a parameter here
from trainables.config import TrainConfig, format_validation_error
from trainables.errors import UserError
from trainables.storage import is_uri


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SynthSection(_Strict):
    """Generate the synthetic dataset into ``data.root`` first (when it is not there yet)."""

    n: int = Field(2000, ge=16)
    image_size: int = Field(128, ge=32)
    seed: int = 0


class DataSection(_Strict):
    format: str = "isic2019"
    root: str
    options: dict = Field(default_factory=dict)
    image_size: int = Field(224, ge=16)
    quality: int = Field(90, ge=50, le=100)
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    seed: int = 0
    official_split: bool = False
    prepared: str | None = Field(None, description="where prepared shards go; default <storage>/<name>/prepared")
    synth: SynthSection | None = None


OPTUNA_GOOD_FRACTION = 0.1  # TPE's own gamma (optuna.samplers._tpe.sampler.default_gamma)


class TuneSection(_Strict):
    num_samples: int = Field(16, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: what the cluster can hold")
    max_epochs: int = Field(10, ge=1)
    max_trial_epochs: int | None = Field(
        None, ge=1, description="end the search once its trials have run this many epochs in all (a budget)"
    )
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0)
    scheduler: Literal["asha", "none"] = "asha"
    metric: str = "val/lesion_bacc"
    mode: Literal["max", "min"] = "max"
    sampler: Literal["tpe", "random", "qmc"] = "tpe"
    tpe_startup_trials: int = Field(10, ge=0, description="TPE's random trials before it models (Optuna: 10)")
    tpe_good_fraction: float = Field(
        OPTUNA_GOOD_FRACTION,
        gt=0.0,
        le=0.5,
        description="share of the trials TPE models as good (Optuna: 0.1, at most 25 trials)",
    )
    seed: int = 0
    study_storage: str | None = Field(None, description="Optuna RDB URL, e.g. sqlite:///study.db")
    max_failures: int = Field(1, ge=0, description="retries of a failed trial")
    worker_max_failures: int = Field(2, ge=0, description="worker-group restarts inside a trial")
    keep_checkpoints: int = Field(2, ge=1)
    deterministic: bool = Field(
        False,
        description="one trial at a time: the sampler and early stopping see the same results in the same order on "
        "any machine, so a rerun takes the same decisions (slower when the cluster could run trials side by side)",
    )

    @model_validator(mode="after")
    def _grace_within_budget(self):
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period ({self.grace_period}) must not exceed max_epochs ({self.max_epochs})")
        if self.deterministic and (self.max_concurrent_trials or 1) > 1:
            raise ValueError(
                f"deterministic: true runs one trial at a time; remove max_concurrent_trials "
                f"({self.max_concurrent_trials}) or set deterministic: false"
            )
        return self


class TrainSection(TrainConfig):
    """Base settings of every trial: TrainConfig fields plus how many workers and which devices."""

    workers_per_trial: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    use_gpu: bool | Literal["auto"] = "auto"
    gpus_per_worker: float = Field(
        1.0,
        description="GPUs each Train worker holds when trials train on GPUs: a fraction in (0, 1] packs workers "
        "onto one GPU (0.25: four share it, so four one-worker trials run on one GPU), or a whole number >= 1",
    )

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpu_share(cls, value: float) -> float:
        """Ray schedules a fraction of one GPU, or whole GPUs: 1.5 GPUs for one worker cannot be placed."""
        if not (0.0 < value <= 1.0 or (value > 1.0 and value == int(value))) or round(value, 4) != value:
            raise ValueError(
                f"must be a fraction of one GPU in (0, 1] with at most 4 decimals (0.25: four workers share a GPU) "
                f"or a whole number of GPUs (1, 2, ...); got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _one_rank_per_gpu(self):
        """NCCL refuses two DDP ranks of one run on the same GPU ("Duplicate GPU detected"), and Ray may pack a
        trial's fractional workers onto one: fractions share a GPU between trials, each of one worker."""
        if self.gpus_per_worker < 1.0 and self.workers_per_trial > 1 and self.use_gpu is not False:
            raise ValueError(
                f"gpus_per_worker {self.gpus_per_worker:g} shares a GPU between trials of one worker each; with "
                f"workers_per_trial {self.workers_per_trial} two DDP ranks could land on one GPU (NCCL refuses "
                "that): set workers_per_trial: 1, or gpus_per_worker: 1"
            )
        return self

    def train_config(self) -> dict:
        return self.model_dump(exclude={"workers_per_trial", "cpus_per_worker", "use_gpu", "gpus_per_worker"})


class RetrainSection(_Strict):
    seeds: int = Field(5, ge=1, description="training runs per arm; below 5 the seed variance is poorly estimated")
    tta: int = Field(
        1,
        ge=1,
        le=8,
        description="test-time views of the test evaluation: 1 = off; 2-8 average the softmax over flips and 90-degree "
        "rotations (trainables/tta.py); recorded in each run's metrics.json",
    )


ARM_NAMES = ("mtl", "meta", "mtl_meta", "single_task")  # tuner/arms.py says what each trains and takes


class CompareSection(_Strict):
    """What ``retrain`` trains and ``compare`` reports: named arms, each compared with single-task."""

    baseline: Literal["ablation", "tuned"] = Field(
        "ablation",
        description="ablation: every arm is the experiment's best configuration with the site head and the "
        "metadata inputs switched (MTL's best with the site head off, for single-task); tuned: `tune` also runs one "
        "search per other arm with the same budget (search space: the experiment's own turned into the arm's) and "
        "retrain uses each arm's best trial",
    )
    arms: list[Literal["mtl", "meta", "mtl_meta", "single_task"]] | Literal["all"] | None = Field(
        None,
        description="the arms to compare, each with single_task: mtl (site as a target), meta (site, age and sex "
        "as inputs), mtl_meta (both), single_task; `all` for the four; default: the experiment's own arm (mtl for "
        "the shipped spaces) and single_task",
    )

    @field_validator("arms")
    @classmethod
    def _arms(cls, arms):
        if arms == "all":
            return list(ARM_NAMES)
        if arms is None:
            return None
        repeated = sorted({a for a in arms if arms.count(a) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once; name each arm once")
        if "single_task" not in arms or len(arms) < 2:
            raise ValueError(
                f"{arms}: every arm is compared with single_task, so list single_task and at least one other arm "
                f"(known: {', '.join(ARM_NAMES)}, or `all`)"
            )
        return arms


class ExperimentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    storage: str = "~/skintune-results"
    data: DataSection
    search_space: str = "mtl"
    tune: TuneSection = Field(default_factory=TuneSection)
    train: TrainSection = Field(default_factory=TrainSection)
    retrain: RetrainSection = Field(default_factory=RetrainSection)
    compare: CompareSection = Field(default_factory=CompareSection)

    @property
    def experiment_dir(self) -> str:
        return storage_io.join(self.storage, self.name)

    @property
    def prepared_dir(self) -> str:
        return self.data.prepared or storage_io.join(self.experiment_dir, "prepared")


def resolve_storage(path: str) -> str:
    """An absolute local path, or the URI unchanged (Ray Train needs one of the two)."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def load_experiment(path: str | Path, storage: str | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML; ``storage`` (from ``--storage``) overrides the file's."""
    path = str(path) if is_uri(str(path)) else Path(path)
    if not storage_io.exists(str(path)):
        raise UserError(f"{path}: no such experiment file (the shipped ones are in experiments/)")
    try:
        data = yaml.safe_load(storage_io.read_text(str(path)))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with keys name, data, tune, train...")
    if storage:
        data["storage"] = storage
    try:
        exp = ExperimentConfig(**data)
    except ValidationError as exc:
        raise UserError(f"{path}: {format_validation_error(exc, model=ExperimentConfig)}") from None
    exp.storage = resolve_storage(exp.storage)
    exp.data.root = str(Path(exp.data.root).expanduser().resolve())
    if exp.data.prepared:
        exp.data.prepared = resolve_storage(exp.data.prepared)
    return exp
