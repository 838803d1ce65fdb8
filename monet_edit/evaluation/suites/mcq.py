"""MMLU-style multiple choice by answer log-likelihood.

Prompt: the question and its four lettered choices followed by "Answer:" (the format of the domain
corpora). Each choice is scored by the summed log-likelihood of its continuation " X. text" given
the prompt; the prediction is the best-scoring choice (`accuracy`, not length-normalised). The
length-normalised variant (log-likelihood per character of the continuation, lm-eval's acc_norm)
is reported beside it as `accuracy_norm`. A small model is near chance (0.25).
"""

from __future__ import annotations

from ...infra.params import Param, at_least
from . import Suite

LETTERS = "ABCD"


def prompt_and_choices(doc: dict) -> tuple[str, list[str]]:
    choices = doc["choices"]
    lines = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{doc['question']}\n{lines}\nAnswer:", [f" {LETTERS[i]}. {c}" for i, c in enumerate(choices)]


def continuation_logliks(model, context: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
    """(summed log-likelihood, greedy) of each continuation's token ids after the `context` ids;
    greedy: every continuation token is the argmax (lm-eval's is_greedy).

    The context runs once; the continuations then run as one batch on its KV cache (right-padded,
    which causal attention ignores). A continuation's last token is never fed, so context plus
    continuation may fill the model's positions + 1; continuations are cut to the model's positions
    and the context (at least one token) from the left to fit. Shared with the lm-eval wrapper."""
    import torch

    with torch.inference_mode():
        return _continuation_logliks(model, context, conts)


def _continuation_logliks(model, context: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
    import torch
    import torch.nn.functional as F

    limit = model.config.max_position_embeddings
    conts = [c[:limit] for c in conts]
    width = max(1, *(len(c) for c in conts))
    context = context[max(0, len(context) - (limit - width + 1)):]
    device = next(model.parameters()).device
    out = model(torch.tensor([context], device=device), use_cache=width > 1)
    first = F.log_softmax(out.logits[0, -1:].float(), dim=-1).cpu()
    if width > 1:
        cache = [(k.expand(len(conts), -1, -1, -1), v.expand(len(conts), -1, -1, -1))
                 for k, v in out.past_key_values]
        ids = torch.zeros(len(conts), width - 1, dtype=torch.long)
        for r, c in enumerate(conts):
            ids[r, : max(0, len(c) - 1)] = torch.tensor(c[:-1], dtype=torch.long)
        rest = F.log_softmax(model(ids.to(device), past_key_values=cache).logits.float(), dim=-1).cpu()
    scores = []
    for r, c in enumerate(conts):
        logp = torch.cat((first, rest[r, : len(c) - 1])) if len(c) > 1 else first[: len(c)]
        target = torch.tensor(c, dtype=torch.long)
        scores.append((float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())))
    return scores


def choice_logliks(model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    """Summed log-likelihood of each choice's tokens after the prompt (see continuation_logliks)."""
    conts = [tokenizer.encode(c, add_bos=False) for c in choices]
    return [ll for ll, _ in continuation_logliks(model, tokenizer.encode(prompt), conts)]


def tally(model, tokenizer, docs: list[dict]) -> list[int]:
    """[correct, correct_norm, n] over `docs`: counts, so the shares of several ranks add."""
    correct = correct_norm = 0
    for doc in docs:
        prompt, choices = prompt_and_choices(doc)
        ll = choice_logliks(model, tokenizer, prompt, choices)
        norm = [v / max(1, len(c)) for v, c in zip(ll, choices, strict=True)]
        correct += int(max(range(len(ll)), key=ll.__getitem__) == doc["answer"])
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == doc["answer"])
    return [correct, correct_norm, len(docs)]


def result(correct: float, correct_norm: float, n: float) -> dict:
    """Accuracy (summed log-likelihood) and accuracy_norm (per character) from counts."""
    n = int(n)
    return {"accuracy": correct / n if n else None, "accuracy_norm": correct_norm / n if n else None, "n": n}


def score(model, tokenizer, docs: list[dict]) -> dict:
    """Accuracy and accuracy_norm over `docs` (one process)."""
    return result(*tally(model, tokenizer, docs))


# ---------------------------------------------------------------------------- the suite


def _requires(target) -> str | None:
    if target.kind != "domain":
        return (f"--suite mcq needs a domain target (multiple choice comes from the MMLU domains), "
                f"not {target.kind} {target.name}")
    return None


def _load(target, params, tokenizer, seq_len: int) -> tuple[dict, dict[str, str]]:
    from ...corpora import build, names

    data, fingerprints = {}, {}
    for name in names("domain"):
        built = build(name)
        fingerprints[name] = built.fingerprint
        data[name] = built.load("eval")[: params.mcq_items]
    return data, fingerprints


def _run(model, tokenizer, data: dict, params, group) -> dict:
    return {name: result(*group.sum_numbers(tally(model, tokenizer, [docs[i] for i in group.take(len(docs))])))
            for name, docs in data.items()}


def _summarise(target_name: str, mcq: dict) -> tuple[dict, list[str]]:
    def acc(name: str, side: str) -> float | None:
        return mcq[name][side]["accuracy"]

    others = [n for n in mcq if n != target_name]
    out = {"target_mcq_before": acc(target_name, "before"), "target_mcq_after": acc(target_name, "after"),
           "others_mcq_delta": _mean([acc(n, "after") - acc(n, "before") for n in others if mcq[n]["before"]["n"]])}
    out["target_mcq_delta"] = (None if out["target_mcq_before"] is None
                               else out["target_mcq_after"] - out["target_mcq_before"])
    return out, ["multiple choice: summed answer log-likelihood, not length-normalised "
                 "(accuracy_norm: per character); chance is 0.25"]


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


SUITE = Suite(
    name="mcq",
    help="multiple choice per MMLU category (domains)",
    metrics={
        "target_mcq_before": "multiple-choice accuracy on the target category, base",
        "target_mcq_after": "multiple-choice accuracy on the target category, edited",
        "target_mcq_delta": "multiple-choice accuracy delta on the target category",
        "others_mcq_delta": "mean multiple-choice accuracy delta over the other categories",
    },
    params=(Param("mcq_items", int, 100, "Questions per category (mcq suite).", at_least(1), "at least 1"),),
    default_for=("domain",),
    requires=_requires,
    load=_load,
    run=_run,
    describe=lambda data, params: f"{sum(len(d) for d in data.values())} questions",
    summarise=_summarise,
)
