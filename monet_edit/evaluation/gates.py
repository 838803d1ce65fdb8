"""`--gate` expressions: turn evaluation numbers into an exit code for CI.

An expression is comma-separated conditions `metric OP number`, OP one of >=, <=, >, <, ==;
metrics are the keys of an evaluation's summary (metrics(): each suite declares its own). Parsing and naming errors are
UsageErrors raised before any computation; a condition that does not hold raises GateFailed.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from dataclasses import dataclass

from ..errors import GateFailed, UsageError

ALWAYS = {
    "experts_masked": "experts masked in the edited model (all groups)",
    "fraction_masked": "fraction of all experts masked in the edited model",
}


def metrics() -> dict[str, tuple[str, str]]:
    """summary key -> (suite that produces it, meaning); loss in nats per token, deltas after - before."""
    from . import suites

    out = {name: ("", meaning) for name, meaning in ALWAYS.items()}
    for suite in suites.registry().values():
        out.update({name: (suite.name, meaning) for name, meaning in suite.metrics.items()})
    return out


OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def holds(self, actual: float | None) -> bool:
        return actual is not None and not math.isnan(actual) and OPS[self.op](actual, self.value)


def metric_help() -> str:
    return "; ".join(f"{name} ({suite or 'always'})" for name, (suite, _) in metrics().items())


def parse(expression: str, suites: tuple[str, ...] | None = None) -> list[Condition]:
    """Conditions of `expression`; with `suites`, every metric must be produced by one of them."""
    parts = expression.split(",")
    if not expression.strip() or any(not p.strip() for p in parts):
        raise UsageError(f"--gate {expression!r}: empty condition (expected 'metric OP number, ...')")
    out = []
    for part in parts:
        m = CONDITION.match(part)
        if m is None:
            raise UsageError(f"--gate: cannot parse {part.strip()!r} (expected 'metric OP number' with OP "
                             f"one of {', '.join(OPS)})")
        metric, op, number = m.groups()
        known = metrics()
        if metric not in known:
            close = difflib.get_close_matches(metric, list(known), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"--gate: unknown metric {metric!r}; {hint}known: {', '.join(known)}")
        suite = known[metric][0]
        if suites is not None and suite and suite not in suites:
            raise UsageError(f"--gate: metric {metric} needs the {suite} suite (running: {', '.join(suites)})")
        out.append(Condition(metric, op, float(number)))
    return out


def check(conditions: list[Condition], summary: dict) -> list[dict]:
    """Each condition with the actual value and whether it holds."""
    return [{"condition": str(c), "metric": c.metric, "actual": summary.get(c.metric),
             "passed": c.holds(summary.get(c.metric))} for c in conditions]


def enforce(results: list[dict]) -> None:
    """Raise GateFailed naming every condition that does not hold."""
    failed = [r for r in results if not r["passed"]]
    if failed:
        what = ", ".join(f"{r['condition']} (actual {_fmt(r['actual'])})" for r in failed)
        raise GateFailed(f"gate failed: {what}")


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4g}"
