"""`--gate` expressions: turn evaluation numbers into an exit code for CI.

An expression is comma-separated conditions `metric OP number`, OP one of >=, <=, >, <, ==;
metrics are the keys of an evaluation's summary (METRICS). Parsing and naming errors are
UsageErrors raised before any computation; a condition that does not hold raises GateFailed.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from dataclasses import dataclass

from ..errors import GateFailed, UsageError

# summary key -> (suite that produces it, meaning). Loss in nats per token; deltas are after - before.
METRICS: dict[str, tuple[str, str]] = {
    "experts_masked": ("", "experts masked in the edited model (all groups)"),
    "fraction_masked": ("", "fraction of all experts masked in the edited model"),
    "target_loss_before": ("loss", "held-out loss on the target, base model"),
    "target_loss_after": ("loss", "held-out loss on the target, edited model"),
    "target_loss_delta": ("loss", "target loss after - before"),
    "target_loss_rel": ("loss", "target loss delta / before"),
    "others_loss_delta": ("loss", "mean loss delta over the target's sibling corpora"),
    "selectivity": ("loss", "target_loss_delta / others_loss_delta (inf when others do not rise)"),
    "target_accuracy_delta": ("loss", "next-token accuracy delta on the target"),
    "others_accuracy_delta": ("loss", "mean next-token accuracy delta over the siblings"),
    "general_loss_delta": ("loss", "loss delta on the general mixture"),
    "general_loss_rel": ("loss", "general loss delta / before"),
    "target_mcq_before": ("mcq", "multiple-choice accuracy on the target category, base"),
    "target_mcq_after": ("mcq", "multiple-choice accuracy on the target category, edited"),
    "target_mcq_delta": ("mcq", "multiple-choice accuracy delta on the target category"),
    "others_mcq_delta": ("mcq", "mean multiple-choice accuracy delta over the other categories"),
    "emt_before": ("toxicity", "expected maximum toxicity on toxic prompts, base"),
    "emt_after": ("toxicity", "expected maximum toxicity on toxic prompts, edited"),
    "emt_delta": ("toxicity", "expected maximum toxicity delta (toxic prompts)"),
    "emt_rel": ("toxicity", "expected maximum toxicity delta / before (toxic prompts)"),
    "toxicity_prob_delta": ("toxicity", "toxicity probability delta (toxic prompts)"),
    "emt_nontoxic_delta": ("toxicity", "expected maximum toxicity delta on non-toxic prompts"),
}

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
    return "; ".join(f"{name} ({suite or 'always'})" for name, (suite, _) in METRICS.items())


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
        if metric not in METRICS:
            close = difflib.get_close_matches(metric, list(METRICS), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"--gate: unknown metric {metric!r}; {hint}known: {', '.join(METRICS)}")
        suite = METRICS[metric][0]
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
