"""The skintune commands that produced an experiment, in the order they finished: ``<experiment>/commands.json``.

``tune`` and ``retrain`` (and ``demo``, which runs the whole pipeline) append their own command line when they
succeed; the report's reproduction section lists them, then the ``compare`` command that wrote it.
"""

from __future__ import annotations

import json
import shlex

from trainables import storage

FILE = "commands.json"


def recorded(experiment_dir: str) -> list[str]:
    """The recorded command lines (none for an experiment made before they were recorded)."""
    path = storage.join(experiment_dir, FILE)
    return list(json.loads(storage.read_text(path))) if storage.exists(path) else []


def record(experiment_dir: str, argv: list[str]) -> None:
    """Append ``skintune ARGV`` (a repeat of the last line is not added twice)."""
    line = shlex.join(["skintune", *argv])
    lines = recorded(experiment_dir)
    if not lines or lines[-1] != line:
        storage.write_text(storage.join(experiment_dir, FILE), json.dumps([*lines, line], indent=2))
