"""Offline check of a Ray cluster-launcher YAML (``cluster.yaml``) before ``ray up``: no credentials, no cluster.

Layers: Ray's JSON schema (``ray/autoscaler/ray-schema.json``, unknown keys rejected) with jsonschema; Ray's
``prepare_config`` (merges the provider's defaults.yaml, no API calls) and ``validate_config``; the node-type limits
Ray leaves to run time. Each problem is one :class:`UserError` line: file, YAML line, key path and what to do."""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from trainables.errors import UserError, where


def _fail(path: Path, text: str, keys: list, message: str) -> UserError:
    """``<path> line <n>: <message>``, n the line of the key path ``keys`` (its deepest existing part) in ``text``."""
    node, line = yaml.compose(text, Loader=yaml.SafeLoader), None
    for key in keys:
        pairs = node.value if isinstance(node, yaml.MappingNode) else []
        hit = next(((k, v) for k, v in pairs if k.value == str(key)), None)
        if hit is None:
            break
        line, node = hit[0].start_mark.line + 1, hit[1]
    return UserError(f"{where(path, line)}: {message}")


def _describe(error: Any) -> tuple[list, str]:
    """The key path of one jsonschema error and a one-line explanation with what to do."""
    keys = list(error.absolute_path)
    dotted = ".".join(str(k) for k in keys)
    at = f" under {dotted!r}" if dotted else " at the top level"
    if error.validator == "additionalProperties":
        valid = sorted(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in valid)[0]
        near = difflib.get_close_matches(unknown, valid, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"valid keys here: {', '.join(valid)}"
        return keys + [unknown], f"unknown key {unknown!r}{at}; {hint}"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance][0]
        return keys, f"missing key {missing!r}{at}; add it (see the shipped cluster.yaml)"
    if error.validator == "type":
        kinds = [error.validator_value] if isinstance(error.validator_value, str) else error.validator_value
        want = " or ".join(f"an {k}" if k[0] in "aeiou" else f"a {k}" for k in kinds)
        return keys, f"{dotted} is {error.instance!r}; it must be {want}"
    return keys, f"{dotted or 'the file'}: {error.message}"


def _check_schema(path: Path, text: str, cfg: dict) -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(cfg))
    if errors:
        keys, message = _describe(jsonschema.exceptions.best_match(errors))
        more = f" ({len(errors) - 1} more problem(s) after this one)" if len(errors) > 1 else ""
        raise _fail(path, text, keys, message + more)


def _check_node_types(path: Path, text: str, cfg: dict) -> None:
    """What Ray only notices at run time: the head type exists, each worker type's limits fit the global one."""
    types, head, limit = cfg["available_node_types"], cfg.get("head_node_type"), cfg["max_workers"]
    if head not in types:
        near = difflib.get_close_matches(str(head), list(types), n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"use one of {', '.join(types)}"
        raise _fail(path, text, ["head_node_type"], f"head_node_type {head!r} is not in available_node_types; {hint}")
    for name, spec in types.items():
        lo, hi, keys = spec["min_workers"], spec["max_workers"], ["available_node_types", name]
        if name != head and hi > limit:
            msg = f"max_workers {hi} exceeds the global max_workers {limit}; raise the global one or lower this"
            raise _fail(path, text, [*keys, "max_workers"], f"available_node_types.{name}.{msg}")
        if lo > hi:
            msg = f"min_workers {lo} is above this type's max_workers {hi}; lower min_workers"
            raise _fail(path, text, [*keys, "min_workers"], f"available_node_types.{name}.{msg}")


def _ray(path: Path, text: str, check: Any, cfg: dict) -> Any:
    """Run one of Ray's config functions quietly (its INFO lines and file-mount advice are not problems)."""
    log = logging.getLogger("ray.autoscaler")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return check(cfg)
    except NotImplementedError:
        msg = f"provider.type {cfg['provider']['type']!r} is unknown to Ray; use aws, gcp, azure or local"
        raise _fail(path, text, ["provider", "type"], msg) from None
    except Exception as exc:  # Ray's messages name the key (max_workers, head_node_type, docker, ...)
        raise UserError(f"{path}: {exc} (Ray's cluster-config check)") from None
    finally:
        log.setLevel(level)


def _load(path: Path) -> tuple[str, dict]:
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{path}: no such cluster config file; start from the shipped cluster.yaml") from None
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark, start = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        opened = f"; it began on line {start.line + 1}" if start and mark and start.line != mark.line else ""
        problem = f"{getattr(exc, 'problem', None) or exc}{opened}"
        raise UserError(f"{where(path, mark and mark.line + 1)}: not valid YAML ({problem}); fix the syntax") from None
    if not isinstance(cfg, dict):
        got = "an empty file" if cfg is None else f"a {type(cfg).__name__}"
        raise UserError(f"{path}: expected a mapping of cluster settings (cluster_name:, provider:, ...), got {got}")
    return text, cfg


def _node(cfg: dict, name: str) -> dict:
    spec = cfg["available_node_types"][name]
    kind = spec["node_config"].get("InstanceType") or spec["node_config"].get("machineType")
    res = ", ".join(f"{v} {k}" for k, v in spec["resources"].items())
    label = " ".join(filter(None, [name, kind, f"[{res}]" if res else ""]))
    keep = {k: spec[k] for k in ("resources", "min_workers", "max_workers")}
    return {"name": name, "instance_type": kind, "label": label, **keep}


def validate_cluster_file(path: str | Path) -> dict:
    """Check a cluster-launcher YAML offline; raise :class:`UserError` (one line) or return a summary: cluster_name,
    provider {type, region}, max_workers, head, workers (each node type: name, instance_type, resources, min_workers,
    max_workers, label) and ``text``, the line a CLI prints (``cluster.yaml: valid (head: ...; workers: ...)``)."""
    path = Path(path)
    text, cfg = _load(path)
    _check_schema(path, text, cfg)
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = _ray(path, text, prepare_config, copy.deepcopy(cfg))
    _check_node_types(path, text, prepared)
    _ray(path, text, validate_config, prepared)
    head = prepared["head_node_type"]
    out = {k: prepared[k] for k in ("cluster_name", "max_workers")}
    out["provider"] = {k: prepared["provider"].get(k) for k in ("type", "region")}
    workers = [n for n in prepared["available_node_types"] if n != head]
    out["head"], out["workers"] = _node(prepared, head), [_node(prepared, n) for n in workers]
    listed = "; ".join(f"{w['label']} x{w['min_workers']}-{w['max_workers']}" for w in out["workers"]) or "none"
    out["text"] = f"{path.name}: valid (head: {out['head']['label']}; workers: {listed})"
    return out
