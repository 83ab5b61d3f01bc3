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
``load_space("mtl")`` loads a shipped space; ``define_by_run(space)`` gives ``OptunaSearch(space=...)``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainables.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
ROLES = ("scientific", "nuisance", "fixed")
_COMMON = ("type", "role", "when")
KEYS = {
    "float": (*_COMMON, "low", "high", "log", "step", "scale_by"),
    "int": (*_COMMON, "low", "high", "log", "step"),
    "categorical": (*_COMMON, "choices"),
    "fixed": (*_COMMON, "value"),
}
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # no '/' or '.': Ray would unflatten those into nested dicts


class SearchSpaceError(UserError):
    """An invalid search space; ``problems`` lists every problem, each naming the file and key."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = [f"{source}: {p}" for p in problems]
        head = f"search space {source} has {len(problems)} problems: " if len(problems) > 1 else f"{source}: "
        super().__init__(head + "; ".join(problems))


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # float | int | categorical | fixed
    role: str  # scientific | nuisance | fixed
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # ((param, allowed values), ...): all must hold
    scale_by: tuple[tuple[str, tuple[tuple[Any, float], ...]], ...] = ()  # ((param, ((choice, factor), ..)),)

    def active(self, config: dict[str, Any]) -> bool:
        return all(c in config and config[c] in values for c, values in self.when)

    def factor(self, config: dict[str, Any]) -> float:
        return math.prod(dict(table).get(config.get(c), 1.0) for c, table in self.scale_by)

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def midpoint(self) -> Any:
        """Deterministic centre: the first choice, or the (geometric) middle snapped to the step grid."""
        if self.type == "categorical":
            return self.choices[0]
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.step is not None:
            mid = self.low + round((mid - self.low) / self.step) * self.step
        return round(mid) if self.type == "int" else float(mid)


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
    path = PACKAGE_DIR / f"{text}.yaml" if _NAME.match(text) else Path(text).expanduser()
    if not path.is_file():
        hint = _hint(text, shipped()) if _NAME.match(text) else ""
        raise UserError(
            f"search space {text!r}: no such file (shipped spaces: {', '.join(shipped())}){hint}; set search_space "
            "to a shipped name or the path of a search-space YAML"
        )
    source = str(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        raise SearchSpaceError(source, [_yaml_problem(e)]) from None
    except UnicodeDecodeError as e:
        raise SearchSpaceError(source, [f"not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    problems: list[str] = []
    params = _check_file(raw, problems, None if known_keys is None else list(known_keys))
    if problems:
        raise SearchSpaceError(source, problems)
    return SearchSpace(name=path.stem, path=source, params=tuple(params))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """E.g. ``invalid YAML at line 3: expected ',' or '}' (while parsing a flow mapping at line 2)``."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return f"invalid YAML: {e}"
    line = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
    context = f" ({e.context} at line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
    return f"invalid YAML{line}: {e.problem}{context}"


def _check_file(raw: Any, problems: list[str], known: list[str] | None) -> list[Param]:
    if raw is None:
        problems.append("the file is empty (expected a mapping with a 'params' key)")
        return []
    if not isinstance(raw, dict):
        problems.append(f"top level must be a mapping with a 'params' key (got {type(raw).__name__})")
        return []
    for key in raw:
        if key != "params":
            problems.append(f"unknown top-level key {key!r} (allowed: params)")
    specs = raw.get("params")
    if not isinstance(specs, dict) or not specs:
        problems.append("params: must be a non-empty mapping of parameter name -> spec")
        return []
    names = [str(n) for n in specs]
    params: dict[str, Param] = {}
    for name, spec in specs.items():
        name = str(name)
        where = f"params.{name}"
        if not _NAME.match(name):
            problems.append(f"{where}: a name must be letters, digits and '_' (it is a training-config key)")
        elif known is not None and name not in known:
            problems.append(f"{where}: unknown parameter {name!r}{_hint(name, known)}")
        param = _check_param(name, spec, where, problems, params, names)
        if param is not None:
            params[name] = param
    if known is not None:
        _check_values(params.values(), problems)
    return list(params.values())


def _check_values(params: Iterable[Param], problems: list[str]) -> None:
    """Fixed values and categorical choices must be valid settings of their training-config key (e.g. a known
    backbone), so a typo fails now rather than in a trial's worker after Ray has started."""
    from trainables.config import value_problem

    for p in params:
        values = [("value", p.value)] if p.type == "fixed" else [(f"choices[{i}]", c) for i, c in enumerate(p.choices)]
        for at, value in values:
            problem = value_problem(p.name, value)
            if problem:
                problems.append(f"params.{p.name}.{at}: {problem}")


def _check_param(name, spec, where, problems, earlier: dict[str, Param], names: list[str]) -> Param | None:
    if not isinstance(spec, dict):
        problems.append(f"{where}: must be a mapping like {{type: float, low: 0, high: 1, role: nuisance}}")
        return None
    n_before = len(problems)
    kind = spec.get("type")
    if kind is None:
        problems.append(f"{where}: missing type (one of {', '.join(KEYS)})")
        return None
    if not isinstance(kind, str) or kind not in KEYS:
        problems.append(f"{where}.type: unknown type {kind!r}{_hint(kind, KEYS)} (one of {', '.join(KEYS)})")
        return None
    for key in spec:
        if key not in KEYS[kind]:
            allowed = ", ".join(sorted(KEYS[kind]))
            problems.append(f"{where}: unknown key {key!r}{_hint(key, KEYS[kind])} (type {kind} allows {allowed})")
    role = _check_role(kind, spec.get("role"), where, problems)
    fields: dict[str, Any] = {}
    if kind in ("float", "int"):
        fields = _check_range(kind, spec, where, problems)
    elif kind == "categorical":
        fields = {"choices": _check_choices(spec.get("choices"), where, problems)}
    elif "value" not in spec:
        problems.append(f"{where}: type fixed needs a value")
    else:
        fields = {"value": spec["value"]}
    when = _check_refs(spec, "when", name, problems, earlier, names)
    scale_by = _check_refs(spec, "scale_by", name, problems, earlier, names)
    if len(problems) > n_before:
        return None
    return Param(name=name, type=kind, role=role, when=when, scale_by=scale_by, **fields)


def _check_role(kind: str, role: Any, where: str, problems: list[str]) -> str:
    if kind == "fixed":
        if role not in (None, "fixed"):
            problems.append(f"{where}.role: a type fixed parameter has role fixed (got {role!r})")
        return "fixed"
    if role is None:
        problems.append(f"{where}: missing role (scientific or nuisance)")
    elif role not in ROLES:
        problems.append(f"{where}.role: unknown role {role!r}{_hint(role, ROLES)} (one of {', '.join(ROLES)})")
    elif role == "fixed":
        problems.append(f"{where}.role: role fixed needs type fixed with a value (got type {kind})")
    return str(role)


def _check_range(kind: str, spec: dict, where: str, problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"log": spec.get("log", False)}
    for key in ("low", "high", "step"):
        v = spec.get(key)
        if isinstance(v, str) and kind == "float":
            v = float(v) if _FLOAT.match(v) else v  # PyYAML reads 1e-5 (no dot) as a string
        if v is None and key != "step":
            problems.append(f"{where}: missing {key}")
        elif v is not None and (isinstance(v, bool) or not isinstance(v, int if kind == "int" else (int, float))):
            problems.append(f"{where}.{key}: must be {'an integer' if kind == 'int' else 'a number'} (got {v!r})")
        else:
            out[key] = v
    low, high, step, log = out.get("low"), out.get("high"), out.get("step"), out["log"]
    if not isinstance(log, bool):
        problems.append(f"{where}.log: must be true or false (got {log!r})")
    if low is not None and high is not None and low > high:
        problems.append(f"{where}: low must be <= high (got low={low}, high={high})")
    if log is True and low is not None and low <= 0:
        problems.append(f"{where}: log=true needs low > 0 (got low={low})")
    if step is not None and log is True:
        problems.append(f"{where}: log=true cannot be combined with step (got step={step})")
    if step is not None and step <= 0:
        problems.append(f"{where}.step: must be > 0 (got step={step})")
    elif step is not None and low is not None and high is not None and low <= high:
        n = (high - low) / step
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
            problems.append(f"{where}: high - low must be a multiple of step (got low={low}, high={high}, step={step})")
    if kind == "float":
        out = {k: float(v) if k != "log" and v is not None else v for k, v in out.items()}
    return out


def _check_choices(choices: Any, where: str, problems: list[str]) -> tuple[Any, ...]:
    if choices is None:
        problems.append(f"{where}: type categorical needs choices")
        return ()
    if not isinstance(choices, list) or not choices:
        problems.append(f"{where}.choices: must be a non-empty list (got {choices!r})")
        return ()
    seen: set = set()
    for i, c in enumerate(choices):
        if c is not None and not isinstance(c, (bool, int, float, str)):
            problems.append(f"{where}.choices[{i}]: must be a string, number, bool or null (got {c!r})")
        elif (type(c), c) in seen:
            problems.append(f"{where}.choices: duplicate choice {c!r}")
        else:
            seen.add((type(c), c))
    return tuple(choices)


def _check_refs(spec: dict, key: str, name: str, problems: list[str], earlier: dict[str, Param], names) -> tuple:
    """Check ``when: {param: values}`` or ``scale_by: {param: {choice: factor}}`` (earlier categoricals)."""
    raw, where = spec.get(key), f"params.{name}.{key}"
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{where}: must be a non-empty mapping {{param: ...}} (got {raw!r})")
        return ()
    out = []
    for ref, arg in raw.items():
        at, target = f"{where}.{ref}", earlier.get(ref)
        if target is None:
            if ref not in names:
                problems.append(f"{at}: unknown parameter {ref!r}{_hint(ref, names)}")
            elif names.index(ref) >= names.index(name):
                problems.append(f"{at}: {ref} must be defined before {name} (params are sampled in file order)")
            continue  # else ref is itself invalid, already reported
        if target.type != "categorical":
            problems.append(f"{at}: {ref} is a {target.type} parameter, but {key} needs a categorical one")
            continue
        if key == "scale_by" and (not isinstance(arg, dict) or not arg):
            problems.append(f"{at}: must be a mapping {{choice: factor}} (got {arg!r})")
            continue
        values = list(arg) if key == "scale_by" else arg if isinstance(arg, list) else [arg]
        for v in values:
            if v not in target.choices:
                problems.append(f"{at}: {v!r} is not one of {ref}'s choices {list(target.choices)}")
        if key == "when":
            out.append((ref, tuple(values)))
            continue
        for choice, factor in arg.items():
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
                problems.append(f"{at}.{choice}: a scale factor must be a number > 0 (got {factor!r})")
        out.append((ref, tuple((c, f) for c, f in arg.items())))
    return tuple(out)


def _hint(word: str, options: Iterable[Any]) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
