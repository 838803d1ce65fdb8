"""Sampling from a Monet model with a KV cache (temperature, nucleus/top-p, seeded)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import UsageError


def _next_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """logits: [B, V] -> next ids [B]."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


@torch.inference_mode()
def sample(model, prompt_ids: list[int], *, num_samples: int = 1, max_new_tokens: int = 32,
           temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, eos_id: int | None = None,
           stop: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """`num_samples` continuations of one prompt, each at most `max_new_tokens`. Stops at EOS (cut
    off) and once `stop(tokens so far)` holds for every row (lm-eval's stop strings; kept)."""
    if temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {top_p}")
    if not prompt_ids:
        raise UsageError("the prompt encodes to no tokens")
    limit = model.config.max_position_embeddings
    if len(prompt_ids) + max_new_tokens > limit:
        raise UsageError(f"prompt ({len(prompt_ids)} tokens) + {max_new_tokens} new tokens exceed the "
                         f"model's {limit} positions")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids] * num_samples, device=device)
    out = model(ids, use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1]
    result = torch.empty(num_samples, 0, dtype=torch.long, device=device)
    done = torch.zeros(num_samples, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        nxt = _next_token(logits, temperature, top_p, gen)
        result = torch.cat((result, nxt[:, None]), dim=1)
        if eos_id is not None:
            done |= nxt == eos_id
        if stop is not None:
            done |= torch.tensor([stop(row) for row in result.tolist()], device=device)
        if (eos_id is not None or stop is not None) and bool(done.all()):
            break
        out = model(nxt[:, None], past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
    rows = []
    for row in result.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        rows.append(row)
    return rows
