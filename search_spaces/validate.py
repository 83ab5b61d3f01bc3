"""Validation of a search-space file (the format is described in :mod:`search_spaces.space`): every problem is
collected, each naming its key, with a "did you mean" where a name is close to a valid one."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

import yaml

from search_spaces.param import NAME, Param

ROLES = ("scientific", "nuisance", "fixed")
_COMMON = ("type", "role", "when")
KEYS = {
    "float": (*_COMMON, "low", "high", "log", "step", "scale_by"),
    "int": (*_COMMON, "low", "high", "log", "step"),
    "categorical": (*_COMMON, "choices"),
    "fixed": (*_COMMON, "value"),
}
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(e: yaml.YAMLError) -> str:
    """E.g. ``invalid YAML at line 3: expected ',' or '}' (while parsing a flow mapping at line 2)``."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return f"invalid YAML: {e}"
    line = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
    context = f" ({e.context} at line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
    return f"invalid YAML{line}: {e.problem}{context}"


def check_file(raw: Any, problems: list[str], known: list[str] | None) -> list[Param]:
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
        if not NAME.match(name):
            problems.append(f"{where}: a name must be letters, digits and '_' (it is a training-config key)")
        elif known is not None and name not in known:
            problems.append(f"{where}: unknown parameter {name!r}{hint(name, known)}")
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
        problems.append(f"{where}.type: unknown type {kind!r}{hint(kind, KEYS)} (one of {', '.join(KEYS)})")
        return None
    for key in spec:
        if key not in KEYS[kind]:
            allowed = ", ".join(sorted(KEYS[kind]))
            problems.append(f"{where}: unknown key {key!r}{hint(key, KEYS[kind])} (type {kind} allows {allowed})")
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
        problems.append(f"{where}.role: unknown role {role!r}{hint(role, ROLES)} (one of {', '.join(ROLES)})")
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
                problems.append(f"{at}: unknown parameter {ref!r}{hint(ref, names)}")
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


def hint(word: str, options: Iterable[Any]) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
