"""MMLU-style multiple choice by answer log-likelihood.

Prompt: the question and its four lettered choices followed by "Answer:" (the format of the domain
corpora). Each choice is scored by the summed log-likelihood of its continuation " X. text" given
the prompt; the prediction is the best-scoring choice (`accuracy`, not length-normalised). The
length-normalised variant (log-likelihood per character of the continuation, lm-eval's acc_norm)
is reported beside it as `accuracy_norm`. A small model is near chance (0.25).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LETTERS = "ABCD"


def prompt_and_choices(doc: dict) -> tuple[str, list[str]]:
    choices = doc["choices"]
    lines = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{doc['question']}\n{lines}\nAnswer:", [f" {LETTERS[i]}. {c}" for i, c in enumerate(choices)]


@torch.inference_mode()
def continuation_logliks(model, context: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
    """(summed log-likelihood, greedy) of each continuation's token ids after the `context` ids;
    greedy: every continuation token is the argmax (lm-eval's is_greedy).

    The context runs once; the continuations then run as one batch on its KV cache (right-padded,
    which causal attention ignores). A continuation's last token is never fed, so context plus
    continuation may fill the model's positions + 1; continuations are cut to the model's positions
    and the context (at least one token) from the left to fit. Shared with the lm-eval wrapper."""
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
