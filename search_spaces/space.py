"""Search spaces: a YAML file → a validated :class:`SearchSpace` → an Optuna define-by-run function.

Format (keys of ``params`` are training-config keys, sampled in file order)::

    params:
      backbone:    {type: categorical, choices: [tf_efficientnet_lite0, resnet18], role: nuisance}
      w_site:      {type: float, low: 0.0, high: 2.0, role: scientific}
      lesion_loss: {type: categorical, choices: [ce, focal], role: nuisance}
      focal_gamma: {type: float, low: 0.5, high: 4.0, role: nuisance, when: {lesion_loss: focal}}
      lr_backbone: {type: float, low: 1.0e-5, high: 1.0e-3, log: true, role: nuisance,
                    scale_by: {backbone: {resnet18: 3.0}}}
      epochs:      {type: fixed, value: 10}

- ``float``/``int``: ``low``, ``high`` (inclusive), optional ``log`` or ``step``, as in optuna's
  distributions. ``categorical``: ``choices`` (scalars). ``fixed``: ``value`` (a constant; role ``fixed``).
- ``role``: ``scientific`` (the question asked), ``nuisance`` (tuned for a fair comparison) or ``fixed``.
- With ``known_keys`` (``skintune tune`` passes TrainConfig's keys), fixed values and categorical choices are also
  checked against the training config (``backbone: resnt18`` fails here, with a "did you mean").
- ``when: {param: value-or-list, ...}``: the parameter exists only when every named categorical parameter,
  defined *earlier* in the file, took one of the values.
- ``scale_by: {param: {choice: factor}}`` (float only): Optuna searches the base range and the trial config
  gets ``value * factor`` for the chosen value of an earlier categorical parameter (unlisted choices: 1.0),
  e.g. a per-backbone learning-rate scale. Optuna's study records the base value, Tune's config the scaled.

Every problem is collected and raised together as one :class:`SearchSpaceError` (a ``UserError``).
``load_space("mtl")`` loads a shipped space; ``define_by_run(space)`` gives ``OptunaSearch(space=...)``;
``space.single_task()`` is the space of an experiment's tuned single-task baseline (``compare: {baseline: tuned}``),
``space.derive(arm, ...)`` that of any other tuned arm (site as a target, metadata as an input, both or neither).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from search_spaces.param import NAME, Param
from search_spaces.validate import StrictLoader, check_file, hint, yaml_problem
from trainables.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
METADATA_PARAMS = ("metadata_inputs", "fusion_width", "metadata_dropout")  # the metadata branch's settings


class SearchSpaceError(UserError):
    """An invalid search space; ``problems`` lists every problem, each naming the file and key."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = [f"{source}: {p}" for p in problems]
        head = f"search space {source} has {len(problems)} problems: " if len(problems) > 1 else f"{source}: "
        super().__init__(head + "; ".join(problems))


@dataclass(frozen=True)
class SearchSpace:
    name: str
    path: str
    params: tuple[Param, ...]

    def sample(self, trial: Any) -> dict[str, Any]:
        """Define-by-run body: suggest every active parameter; fixed values and scaled values included."""
        return self._resolve(lambda p: p.suggest(trial))

    def defaults(self) -> dict[str, Any]:
        """The configuration a trial gets at every parameter's midpoint (first choice for categoricals)."""
        return self._resolve(Param.midpoint)

    def warm_start(self) -> dict[str, Any]:
        """:meth:`defaults` as Optuna sees it (searched params, before scale_by): for points_to_evaluate."""
        return self._resolve(Param.midpoint, scaled=False, with_fixed=False)

    def scientific(self) -> list[str]:
        return [p.name for p in self.params if p.role == "scientific"]

    def nuisance(self) -> list[str]:
        return [p.name for p in self.params if p.role == "nuisance"]

    def fixed(self) -> list[str]:
        return [p.name for p in self.params if p.role == "fixed"]

    def single_task(self) -> SearchSpace:
        """The single-task baseline's space, derived from this one so that both searches tune the same nuisance
        parameters over the same ranges: every ``scientific`` parameter removed, with every parameter whose
        ``when`` names a removed one (and ``scale_by`` entries naming one: factor 1), and ``multitask`` fixed to
        false (in its place, or first when this space does not set it)."""
        return self.derive("single_task", multitask=False)

    def derive(
        self,
        arm: str,
        *,
        multitask: bool,
        metadata: Sequence[str] = (),
        metadata_params: Iterable[Param] = (),
        pin_metadata: bool = False,
    ) -> SearchSpace:
        """The space of another arm of a comparison, derived from this one so that every arm tunes the same
        nuisance parameters over the same ranges (named ``<this space>:<arm>``).

        - ``multitask`` false: every ``scientific`` parameter (the site task's) removed, with every parameter whose
          ``when`` names a removed one (and ``scale_by`` entries naming one: factor 1); ``multitask`` fixed to false
          (in its place, or first). ``multitask`` true keeps the scientific parameters and fixes ``multitask``.
        - the metadata branch's parameters (``metadata_inputs``, ``fusion_width``, ``metadata_dropout``) are
          removed; with ``metadata`` the arm gets ``metadata_inputs`` fixed to it (after ``multitask``) and each of
          ``metadata_params`` this space does not define (the branch's nuisance parameters, from meta.yaml) after
          it, or this space's own. Without ``metadata``, ``metadata_inputs`` is fixed to ``[]`` when this space set
          it (or ``pin_metadata``: the experiment's train section does), so the arm is image only."""
        task = Param(name="multitask", type="fixed", role="fixed", value=multitask)
        own = {p.name: p for p in self.params}
        removed: set[str] = set()
        params: list[Param] = []
        for p in self.params:
            if p.name == "multitask":
                params.append(task)
            elif p.name in METADATA_PARAMS:
                continue
            elif (not multitask and p.role == "scientific") or any(c in removed for c, _ in p.when):
                removed.add(p.name)
            else:
                scale_by = tuple(s for s in p.scale_by if s[0] not in removed)
                params.append(p if scale_by == p.scale_by else replace(p, scale_by=scale_by))
        if task not in params:
            params.insert(0, task)
        at = params.index(task) + 1
        if metadata:
            fields = Param(name="metadata_inputs", type="fixed", role="fixed", value=list(metadata))
            branch = [own.get(p.name, p) for p in metadata_params if p.name in METADATA_PARAMS[1:]]
            params[at:at] = [fields, *branch]
        elif "metadata_inputs" in own or pin_metadata:
            params.insert(at, Param(name="metadata_inputs", type="fixed", role="fixed", value=[]))
        return SearchSpace(name=f"{self.name}:{arm}", path=self.path, params=tuple(params))

    def _resolve(self, pick: Callable[[Param], Any], scaled: bool = True, with_fixed: bool = True) -> dict:
        base: dict[str, Any] = {}  # what Optuna sees; conditions are evaluated on it
        out: dict[str, Any] = {}
        for p in self.params:
            if not p.active(base):
                continue
            if p.type == "fixed":
                base[p.name] = p.value
                if with_fixed:
                    out[p.name] = p.value
                continue
            base[p.name] = out[p.name] = pick(p)
            if scaled and p.scale_by:
                out[p.name] = base[p.name] * p.factor(base)
        return out


@dataclass(frozen=True)
class DefineByRun:
    """Picklable ``f(trial) -> dict`` for ``OptunaSearch(space=...)``: Ray merges the returned dict (fixed and
    scaled values) over the values it captured from ``trial.suggest_*``."""

    space: SearchSpace

    def __call__(self, trial: Any) -> dict[str, Any]:
        return self.space.sample(trial)


def define_by_run(space: SearchSpace) -> DefineByRun:
    return DefineByRun(space)


def shipped() -> list[str]:
    return sorted(p.stem for p in PACKAGE_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path, known_keys: Iterable[str] | None = None) -> SearchSpace:
    """Load and validate a search space: a bare name (``"mtl"``) is a shipped file, anything else a path."""
    text = str(name_or_path)
    path = PACKAGE_DIR / f"{text}.yaml" if NAME.match(text) else Path(text).expanduser()
    if not path.is_file():
        close = hint(text, shipped()) if NAME.match(text) else ""
        raise UserError(
            f"search space {text!r}: no such file (shipped spaces: {', '.join(shipped())}){close}; set search_space "
            "to a shipped name or the path of a search-space YAML"
        )
    source = str(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        raise SearchSpaceError(source, [yaml_problem(e)]) from None
    except UnicodeDecodeError as e:
        raise SearchSpaceError(source, [f"not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    problems: list[str] = []
    params = check_file(raw, problems, None if known_keys is None else list(known_keys))
    if problems:
        raise SearchSpaceError(source, problems)
    return SearchSpace(name=path.stem, path=source, params=tuple(params))
