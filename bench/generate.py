"""Batch-1 greedy generation with a KV cache: the few-token sparse expert path vs the dense one."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from . import common


def run(configs: dict[str, dict], prompt: int, new: int, repeats: int) -> Iterator[dict]:
    for label, fields in configs.items():
        model = common.build(fields, "vertical")
        ids = common.token_ids(model, 1, prompt, seed=5)

        @torch.no_grad()
        def generate(model=model, ids=ids):
            step = model(ids, use_cache=True)
            token = step.logits[:, -1:].argmax(-1)
            for _ in range(new - 1):
                step = model(token, past_key_values=step.past_key_values, use_cache=True)
                token = step.logits[:, -1:].argmax(-1)

        def dense(generate=generate):
            with common.env(MONET_EDIT_SPARSE_TOKENS="0", MONET_EDIT_KERNELS="dense"):
                generate()

        t = common.best_times({"sparse": generate, "dense": dense}, repeats)
        yield common.record("generate", f"batch-1 generation, sparse vs dense expert path ({label})",
                            t["dense"] / t["sparse"], "speed-up (tokens/s)", config=label,
                            tokens_per_s=dict(sparse=round(new / t["sparse"], 1), dense=round(new / t["dense"], 1)))
