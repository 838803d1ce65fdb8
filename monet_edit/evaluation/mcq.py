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
def choice_logliks(model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    """Summed log-likelihood of each choice's tokens after the prompt (one batch of rows).

    The prompt is cut from the left when prompt + choice exceed the model's positions."""
    limit = model.config.max_position_embeddings
    context = tokenizer.encode(prompt)
    conts = [tokenizer.encode(c, add_bos=False)[: limit - 1] for c in choices]
    seqs = [(context + c)[-limit:] for c in conts]
    width = max(len(s) for s in seqs)
    device = next(model.parameters()).device
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
    logp = F.log_softmax(model(ids.to(device)).logits.float(), dim=-1).cpu()
    out = []
    for r, (s, c) in enumerate(zip(seqs, conts, strict=True)):
        start = len(s) - len(c)  # position of the first continuation token
        targets = torch.tensor(s[start:])
        out.append(float(logp[r, start - 1: len(s) - 1].gather(-1, targets[:, None]).sum()))
    return out


def score(model, tokenizer, docs: list[dict]) -> dict:
    """Accuracy (summed log-likelihood) and accuracy_norm (per character) over `docs`."""
    correct = correct_norm = 0
    for doc in docs:
        prompt, choices = prompt_and_choices(doc)
        ll = choice_logliks(model, tokenizer, prompt, choices)
        norm = [v / max(1, len(c)) for v, c in zip(ll, choices, strict=True)]
        correct += int(max(range(len(ll)), key=ll.__getitem__) == doc["answer"])
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == doc["answer"])
    n = len(docs)
    return {"accuracy": correct / n if n else None, "accuracy_norm": correct_norm / n if n else None, "n": n}
