"""Run completions against their problems' tests in the sandbox and count what passes and why
the rest failed (a fixed list of causes, so counts from several ranks add up)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ..sandbox import Outcome, Sandbox
from .problems import Problem

CAUSES = ("AssertionError", "SyntaxError", "IndentationError", "NameError", "TypeError", "ValueError",
          "IndexError", "KeyError", "AttributeError", "ZeroDivisionError", "RecursionError", "MemoryError",
          "timeout", "early exit", "killed", "other")
EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def cause(outcome: Outcome) -> str:
    """Why a failed program failed, one of CAUSES."""
    if outcome.status == "timeout":
        return "timeout"
    reason = outcome.reason()
    if "before the end of the program" in reason:
        return "early exit"
    if reason.startswith("killed by"):
        return "killed"
    m = EXCEPTION.match(reason)
    name = m.group(1).rsplit(".", 1)[-1] if m else ""
    return name if name in CAUSES else "other"


def execute(sandbox: Sandbox, problems: Sequence[Problem], completions: Sequence[Sequence[str]], *,
            workers: int = 1, progress: Callable[[int], None] = lambda _: None) -> list[list[Outcome]]:
    """Outcomes [problem][sample] of running prompt + completion + test + check(entry_point)."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} lists of completions")
    programs = [p.program(c) for p, cs in zip(problems, completions, strict=True) for c in cs]
    flat = sandbox.run_many(programs, workers=workers, progress=progress)
    out, at = [], 0
    for cs in completions:
        out.append(flat[at:at + len(cs)])
        at += len(cs)
    return out


def counts(outcomes: Sequence[Outcome]) -> list[int]:
    """[passing samples, then failures per cause in CAUSES order] of one problem."""
    failed = [cause(o) for o in outcomes if not o.passed]
    return [len(outcomes) - len(failed), *(failed.count(c) for c in CAUSES)]


def tally(problems: Sequence[Problem], outcomes: Sequence[Sequence[Outcome]]) -> dict:
    """Passing samples per problem, failure causes per problem and in all."""
    rows = [counts(outs) for outs in outcomes]
    return from_counts(problems, rows)


def from_counts(problems: Sequence[Problem], rows: Sequence[Sequence[int]]) -> dict:
    """tally()'s result from per-problem count rows (what ranks add up)."""
    total = [sum(col) for col in zip(*rows, strict=True)] if rows else [0] * (len(CAUSES) + 1)
    return {"correct": [int(r[0]) for r in rows],
            "failures": {c: int(n) for c, n in zip(CAUSES, total[1:], strict=True) if n},
            "per_problem": [{"task_id": p.task_id, "correct": int(r[0]),
                             "failures": {c: int(n) for c, n in zip(CAUSES, r[1:], strict=True) if n}}
                            for p, r in zip(problems, rows, strict=True)]}
