"""Declared parameters: one definition of a knob (name, type, default, range, help) that the CLI
options, the recipe schema, validation and reports all read, so they never drift apart."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class Param:
    """A numeric, text or on/off knob of a rule or an evaluation suite."""

    name: str  # a Python identifier: retain_budget (flag --retain-budget, recipe key retain_budget)
    type: type
    default: Any
    help: str
    check: Callable[[Any], bool] | None = None  # the allowed range
    expected: str = ""  # the range in words: "a number >= 1"
    grid: tuple = ()  # values a dry run tries
    optional: bool = False  # None is allowed (and means "decide from the model")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def validate(self, value: Any, where: str = "") -> Any:
        """`value` if it is in range, else one UsageError naming the flag (or `where`)."""
        if value is None and self.optional:
            return None
        bad = value is None or isinstance(value, bool) != (self.type is bool)  # True is an int, not a count
        if not bad and self.type is float:
            bad = not isinstance(value, (int, float)) or not math.isfinite(value)
        elif not bad:
            bad = not isinstance(value, self.type)
        if bad or (self.check is not None and not self.check(value)):
            name = where or self.flag
            raise UsageError(f"{name} must be {self.expected or self.type.__name__}, got {value!r}")
        return float(value) if self.type is float else value


def at_least(n: int) -> Callable[[Any], bool]:
    return lambda v: v >= n


def by_name(params: Iterable[Param], owner: str) -> dict[str, Param]:
    """{name: Param}, refusing two different definitions of one name (two owners may share one)."""
    out: dict[str, Param] = {}
    for p in params:
        if p.name in out and out[p.name] != p:
            raise RuntimeError(f"{owner}: parameter {p.name} is defined twice, differently")
        out[p.name] = p
    return out
