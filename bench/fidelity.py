"""How close bench/baseline.py is to the published modeling file (`--upstream PATH`).

Same weights, same ids: the largest logit difference between the reimplementation and the
published module, and their speed ratio (interleaved, per config, decomposition and thread count).
A ratio near 1 means the baseline's timings stand for the published code's.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from . import baseline, common, upstream


def run(module, configs: dict[str, dict], thread_counts: tuple[int, ...], repeats: int, batch: int = 4,
        seq: int = 256) -> Iterator[dict]:
    for label, fields in configs.items():
        for decompose in ("horizontal", "vertical"):
            yield from _case(module, label, fields, decompose, thread_counts, repeats, batch, seq)


def _case(module, label, fields, decompose, thread_counts, repeats, batch, seq) -> Iterator[dict]:
    model = common.published_layout(common.build(fields, decompose))
    ids = common.token_ids(model, batch, seq)
    published = upstream.forward_fn(module, model)
    fns = {"published": lambda: published(ids), "reimplementation": lambda: baseline.forward(model, ids)}
    with torch.no_grad():
        diff = float((fns["published"]() - fns["reimplementation"]()).abs().max())
    for count in thread_counts:
        with common.threads(count), torch.no_grad():
            t = common.best_times(fns, repeats)
        yield common.record(
            "fidelity", f"{common.TAGS[decompose]} {label}, {count} thread(s): baseline vs published",
            t["published"] / t["reimplementation"], "speed ratio (1 = the same speed)", config=label,
            decompose=decompose, threads=count, max_logit_diff=diff,
            tokens_per_s={k: round(ids.numel() / v, 1) for k, v in t.items()})
