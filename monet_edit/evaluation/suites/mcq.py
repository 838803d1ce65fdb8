"""MMLU-style multiple choice by answer log-likelihood.

Prompt: the question and its four lettered choices followed by "Answer:" (the format of the domain
corpora). Each choice is scored by the summed log-likelihood of its continuation " X. text" given
the prompt; the prediction is the best-scoring choice (`accuracy`, not length-normalised). The
length-normalised variant (log-likelihood per character of the continuation, lm-eval's acc_norm)
is reported beside it as `accuracy_norm`. A small model is near chance (0.25).
"""

from __future__ import annotations

from ...infra.params import Param, at_least
from .. import bootstrap
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


def outcomes(model, tokenizer, docs: list[dict]) -> tuple[list[int], list[int]]:
    """Per question: 1 if the best-scoring choice is the answer (summed log-likelihood), and the
    same by log-likelihood per character (accuracy_norm)."""
    correct, correct_norm = [], []
    for doc in docs:
        prompt, choices = prompt_and_choices(doc)
        ll = choice_logliks(model, tokenizer, prompt, choices)
        norm = [v / max(1, len(c)) for v, c in zip(ll, choices, strict=True)]
        correct.append(int(max(range(len(ll)), key=ll.__getitem__) == doc["answer"]))
        correct_norm.append(int(max(range(len(norm)), key=norm.__getitem__) == doc["answer"]))
    return correct, correct_norm


def result(correct: list, correct_norm: list) -> dict:
    """Accuracy (summed log-likelihood) and accuracy_norm (per character), with the per-question
    outcomes the intervals resample."""
    n = len(correct)
    return {"accuracy": sum(correct) / n if n else None, "accuracy_norm": sum(correct_norm) / n if n else None,
            "n": n, "items": {"correct": list(correct), "correct_norm": list(correct_norm)}}


def score(model, tokenizer, docs: list[dict]) -> dict:
    """Accuracy and accuracy_norm over `docs` (one process)."""
    return result(*outcomes(model, tokenizer, docs))


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
    """Each rank scores its share of the questions; the per-question outcomes are summed over ranks
    (every question is scored by exactly one rank, the others contribute zeros)."""
    import torch

    out = {}
    for name, docs in data.items():
        mine = group.take(len(docs))
        correct, correct_norm = outcomes(model, tokenizer, [docs[i] for i in mine])
        full = torch.zeros(2, len(docs), dtype=torch.float64)
        full[0, mine], full[1, mine] = torch.tensor(correct, dtype=torch.float64), torch.tensor(correct_norm,
                                                                                                 dtype=torch.float64)
        (summed,) = group.sum([full])
        out[name] = result(summed[0].long().tolist(), summed[1].long().tolist())
    return out


def _deltas(name: str, entry: dict, draws) -> tuple[float, object] | None:
    """(accuracy delta, its bootstrap replicates over questions) of one category, None if empty."""
    import numpy as np

    b, a = entry["before"], entry["after"]
    if not b["n"]:
        return None
    cb, ca = np.asarray(b["items"]["correct"], float), np.asarray(a["items"]["correct"], float)
    idx = draws.indices(name, len(cb))
    return a["accuracy"] - b["accuracy"], bootstrap.mean(ca - cb, idx)


def _summarise(target_name: str, mcq: dict) -> tuple[dict, list[str]]:
    import numpy as np

    draws = bootstrap.Draws(0)
    out = {"target_mcq_before": mcq[target_name]["before"]["accuracy"],
           "target_mcq_after": mcq[target_name]["after"]["accuracy"]}
    target = _deltas(target_name, mcq[target_name], draws)
    bootstrap.with_interval(out, "target_mcq_delta", *(target or (None, None)))
    others = [d for n in sorted(mcq) if n != target_name and (d := _deltas(n, mcq[n], draws)) is not None]
    if others:
        bootstrap.with_interval(out, "others_mcq_delta", float(np.mean([d for d, _ in others])),
                                np.mean([r for _, r in others], 0))
    else:
        bootstrap.with_interval(out, "others_mcq_delta", None, None)
    return out, ["multiple choice: summed answer log-likelihood, not length-normalised "
                 "(accuracy_norm: per character); chance is 0.25"]


SUITE = Suite(
    name="mcq",
    help="multiple choice per MMLU category (domains)",
    metrics=bootstrap.described({
        "target_mcq_before": "multiple-choice accuracy on the target category, base",
        "target_mcq_after": "multiple-choice accuracy on the target category, edited",
        "target_mcq_delta": "multiple-choice accuracy delta on the target category",
        "others_mcq_delta": "mean multiple-choice accuracy delta over the other categories",
    }, ("target_mcq_delta", "others_mcq_delta")),
    params=(Param("mcq_items", int, 100, "Questions per category (mcq suite).", at_least(1), "at least 1"),),
    default_for=("domain",),
    requires=_requires,
    load=_load,
    run=_run,
    describe=lambda data, params: f"{sum(len(d) for d in data.values())} questions",
    summarise=_summarise,
)
