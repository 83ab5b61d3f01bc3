"""One search-space parameter (:class:`Param`) and the rule for parameter and space names; shared by the
loader (:mod:`search_spaces.space`) and the validator (:mod:`search_spaces.validate`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # no '/' or '.': Ray would unflatten those into nested dicts


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

    def bounds(self) -> tuple[float | int, float | int]:
        """``(low, high)`` of a float or int parameter (the validator requires both)."""
        if self.low is None or self.high is None:
            raise ValueError(f"{self.name}: a {self.type} parameter has no low/high bounds")
        return self.low, self.high

    def midpoint(self) -> Any:
        """Deterministic centre: the first choice, or the (geometric) middle snapped to the step grid."""
        if self.type == "categorical":
            return self.choices[0]
        low, high = self.bounds()
        mid = math.sqrt(low * high) if self.log else (low + high) / 2
        if self.step is not None:
            mid = low + round((mid - low) / self.step) * self.step
        return round(mid) if self.type == "int" else float(mid)
