"""YAML search spaces (mtl, single_task, meta, demo, smoke) and their loader; see :mod:`search_spaces.space`."""

from search_spaces.space import (
    DefineByRun,
    Param,
    SearchSpace,
    SearchSpaceError,
    define_by_run,
    load_space,
    shipped,
)

__all__ = [
    "DefineByRun",
    "Param",
    "SearchSpace",
    "SearchSpaceError",
    "define_by_run",
    "load_space",
    "shipped",
]
