"""Run completions against their problems' tests in the sandbox and count what passes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from ..sandbox import Outcome, Sandbox
from .problems import Problem


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


def tally(problems: Sequence[Problem], outcomes: Sequence[Sequence[Outcome]]) -> dict:
    """Per problem: samples, passing samples, outcome counts and the commonest failure."""
    rows = []
    for problem, outs in zip(problems, outcomes, strict=True):
        failures = Counter(o.reason() for o in outs if not o.passed)
        rows.append({"task_id": problem.task_id, "samples": len(outs), "correct": sum(o.passed for o in outs),
                     "status": dict(sorted(Counter(o.status for o in outs).items())),
                     "failure": failures.most_common(1)[0][0] if failures else None})
    statuses = Counter()
    for row in rows:
        statuses.update(row["status"])
    return {"correct": [r["correct"] for r in rows], "status": dict(sorted(statuses.items())),
            "seconds": sum(o.seconds for outs in outcomes for o in outs), "per_problem": rows}
