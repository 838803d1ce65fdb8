"""Completions of HumanEval prompts: N samples per problem, seeded, cut at the usual stop strings.

Problem i's batch j is sampled with seed + 1_000_003 * j + i, on the base and on the edited model
alike, so the two sides draw from the same random streams. A prompt longer than the model's
positions allow (prompt + max new tokens) keeps its last tokens; how many were cut is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
TOP_P = 0.95  # nucleus sampling as in Chen et al. (2021)
CONTEXT = 16  # prompt tokens decoded with a completion so that its first characters decode right
SEED_STRIDE = 1_000_003


def truncate(text: str) -> str:
    """`text` up to the first stop string (the rest would start a new top-level statement)."""
    cut = min((i for s in STOP if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def problem_seed(seed: int, index: int, batch: int = 0) -> int:
    return seed + SEED_STRIDE * batch + index


@dataclass(frozen=True)
class Generation:
    samples: int
    temperature: float
    max_new_tokens: int
    seed: int
    batch_size: int

    def record(self) -> dict:
        return {"samples": self.samples, "temperature": self.temperature, "top_p": TOP_P if self.temperature else None,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed, "batch_size": self.batch_size,
                "seeds": f"problem i, batch j: {self.seed} + {SEED_STRIDE} * j + i", "stop": list(STOP)}


def _suffix(tokenizer, context: list[int], ids: list[int]) -> str:
    """The text `ids` add after `context` (decoding `ids` alone can lose a leading space)."""
    head = tokenizer.decode(context)
    full = tokenizer.decode(context + ids)
    return full[len(head):] if full.startswith(head) else tokenizer.decode(ids)


def complete(model, tokenizer, prompt: str, index: int, gen: Generation) -> tuple[list[str], bool, int]:
    """gen.samples completions of `prompt` (stop strings applied), whether the prompt was cut, and
    how many completions reached gen.max_new_tokens with no stop string (cut short)."""
    from ...model.generate import sample

    ids = tokenizer.encode(prompt)
    room = max(1, model.config.max_position_embeddings - gen.max_new_tokens)
    cut = len(ids) > room
    ids = ids[-room:] if cut else ids
    context = ids[-CONTEXT:]

    def stop(row: list[int]) -> bool:
        return any(s in _suffix(tokenizer, context, row) for s in STOP)

    out: list[str] = []
    at_limit = 0
    for batch, start in enumerate(range(0, gen.samples, gen.batch_size)):
        rows = sample(model, ids, num_samples=min(gen.batch_size, gen.samples - start),
                      max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                      top_p=TOP_P if gen.temperature else 1.0, seed=problem_seed(gen.seed, index, batch),
                      eos_id=tokenizer.eos_id, stop=stop)
        for row in rows:
            text = _suffix(tokenizer, ids, row)
            out.append(truncate(text))
            at_limit += len(row) == gen.max_new_tokens and truncate(text) == text
    return out, cut, at_limit
