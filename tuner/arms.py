"""The named arms of a comparison (``compare.arms``): which targets each trains and what it takes as input.

=============  ==========================  =====================================
arm            lesion head trained with    inputs (at training and inference)
=============  ==========================  =====================================
single_task    the lesion label only       the image
mtl            + the body site as target   the image
meta           the lesion label only       the image + site, age, sex
mtl_meta       + the body site as target   the image + site, age, sex
=============  ==========================  =====================================

Every arm is compared with ``single_task`` (the reference). The experiment's own search (``tune/``) belongs to
the arm its search space describes (:func:`primary_arm`: ``multitask`` and ``metadata_inputs`` of the space, else
of the ``train:`` section; ``mtl`` for the shipped mtl/demo/smoke spaces). With ``compare: {baseline: tuned}``
each other arm has a search of its own in ``tune_<arm>/`` (``tune_single_task/`` as before) with the same
budget, over the experiment's space turned into the arm's (:meth:`SearchSpace.derive`: the site task's
scientific parameters removed for an arm without it, the metadata branch's nuisance parameters of ``meta.yaml``
added for an arm with it). With ``ablation`` every arm is the experiment's best configuration with ``multitask``
and ``metadata_inputs`` switched (:func:`switch`).
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces import SearchSpace, load_space
from trainables.config import TRAIN_KEYS
from trainables.errors import UserError
from tuner.config import ExperimentConfig

SINGLE_TASK, MTL, META, MTL_META = "single_task", "mtl", "meta", "mtl_meta"
REFERENCE = SINGLE_TASK  # every other arm is compared with it
METADATA = ("site", "age", "sex")  # the fields a metadata arm takes unless its search or config names others


@dataclass(frozen=True)
class Arm:
    name: str
    multitask: bool  # the body site is a second training target (the site head)
    metadata: bool  # site, age and sex are inputs of the lesion head
    label: str  # short, in table headers and sentences
    title: str  # in figure legends

    @property
    def inputs(self) -> str:
        return "image + site, age, sex" if self.metadata else "image only"


ARMS: dict[str, Arm] = {
    MTL: Arm(MTL, True, False, "MTL", "MTL (lesion + site target)"),
    META: Arm(META, False, True, "metadata input", "metadata as input"),
    MTL_META: Arm(MTL_META, True, True, "MTL + metadata", "MTL + metadata input"),
    SINGLE_TASK: Arm(SINGLE_TASK, False, False, "single-task", "single-task"),
}
ALL_ARMS: tuple[str, ...] = tuple(ARMS)  # `compare: {arms: all}` and `skintune demo --arms all`: reference last
DEFAULT_ARMS = (MTL, SINGLE_TASK)  # what an experiment compares when compare.arms is not set (mtl spaces)


def arm_of(multitask: bool, metadata: bool) -> str:
    return next(a.name for a in ARMS.values() if a.multitask == multitask and a.metadata == metadata)


def label(arm: str) -> str:
    return ARMS[arm].label if arm in ARMS else arm


def title(arm: str) -> str:
    return ARMS[arm].title if arm in ARMS else arm


def primary_arm(exp: ExperimentConfig) -> str:
    """The arm of the experiment's own search (``tune/``): what its search space (else ``train:``) sets. (Read from
    the space each time, a small YAML file: a cache could outlive an edited space or a changed working folder.)"""
    defaults = load_space(exp.search_space).defaults()
    multitask = defaults.get("multitask", exp.train.multitask)
    return arm_of(bool(multitask), bool(defaults.get("metadata_inputs", exp.train.metadata_inputs)))


def comparison_arms(exp: ExperimentConfig) -> tuple[str, ...]:
    """The arms ``retrain`` trains and ``compare`` reports, in order: ``compare.arms``, by default the
    experiment's own arm and single-task (``mtl, single_task`` for the shipped experiments)."""
    primary = primary_arm(exp)
    if exp.compare.arms is not None:
        arms = tuple(exp.compare.arms)
    elif primary == SINGLE_TASK:
        raise UserError(
            f"search space {exp.search_space!r} is already single-task (no site target, no metadata input), so "
            "there is nothing to compare with the single-task baseline; search an MTL space (e.g. search_space: "
            "mtl), or name the arms to derive from it, e.g. compare: {arms: [meta, single_task]}"
        )
    else:
        arms = (primary, SINGLE_TASK)
    if exp.compare.baseline == "tuned" and primary not in arms:
        raise UserError(
            f"compare.arms {list(arms)}: with baseline: tuned the experiment's own search (search space "
            f"{exp.search_space!r}) is the {primary} arm's, which is not listed; add {primary} to compare.arms, "
            "or use baseline: ablation"
        )
    return arms


def search_arms(exp: ExperimentConfig) -> tuple[str, ...]:
    """The searches ``tune`` runs, in order: the experiment's own, then (``baseline: tuned``) one per other arm."""
    primary = primary_arm(exp)
    if exp.compare.baseline != "tuned":
        return (primary,)
    return (primary, *(arm for arm in comparison_arms(exp) if arm != primary))


def is_primary(exp: ExperimentConfig, arm: str | None) -> bool:
    return arm is None or arm == primary_arm(exp)


def arm_space(exp: ExperimentConfig, arm: str | None = None) -> SearchSpace:
    """The search space of one of the experiment's searches: its own (``arm`` None or the experiment's arm), or
    for another tuned arm the same space turned into that arm's (:meth:`SearchSpace.derive`), so that every
    arm tunes the same nuisance parameters over the same ranges."""
    space = load_space(exp.search_space, known_keys=TRAIN_KEYS)
    if arm is None:
        return space
    if arm not in search_arms(exp):  # search_arms also refuses, in one line, what comparison_arms refuses
        raise ValueError(f"no search arm {arm!r} (known: {', '.join(search_arms(exp))})")
    if arm == primary_arm(exp):
        return space
    want, primary = ARMS[arm], primary_arm(exp)
    if want.multitask and not ARMS[primary].multitask:
        raise UserError(
            f"compare.arms: the {arm} arm trains the site as a target, but search space {exp.search_space!r} (the "
            f"{primary} arm's) has no site-task parameters to tune; search a multi-task space (e.g. search_space: "
            "mtl) or use baseline: ablation"
        )
    fields = tuple(space.defaults().get("metadata_inputs") or exp.train.metadata_inputs or METADATA)
    return space.derive(
        arm,
        multitask=want.multitask,
        metadata=fields if want.metadata else (),
        metadata_params=load_space("meta").params if want.metadata else (),
        pin_metadata=bool(exp.train.metadata_inputs),
    )


def switch(config: dict, arm: str) -> dict:
    """An arm's training config from another arm's (``ablation``): ``multitask`` and ``metadata_inputs`` set to the
    arm's (its metadata fields: the config's own when it has some, else site, age and sex); nothing else changes,
    so the metadata branch keeps the config's (or the default) ``fusion_width`` and ``metadata_dropout``."""
    want = ARMS[arm]
    fields = list(config.get("metadata_inputs") or METADATA)
    return {**config, "multitask": want.multitask, "metadata_inputs": fields if want.metadata else []}


def needs(config: dict) -> str:
    """What a model of this training config needs at inference: ``image only`` or ``image + site, age, sex``."""
    fields = [f for f in METADATA if f in (config.get("metadata_inputs") or [])]
    return f"image + {', '.join(fields)}" if fields else "image only"
