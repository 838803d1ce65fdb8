"""Profile tokens/s: `profiling.profile_rows` vs profiling with the faithful baseline.

A profile needs each routing group's (g1, g2) and the statistic S = g1^T g2 per group. With the
published code that is a full forward with output_router_probs (every layer, the lm_head) plus
the same GEMMs; ours stops after the last router and takes the routed expert path. Both are timed
interleaved on the same weights, per config, decomposition and thread count.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from monet_edit import profiling

from . import baseline, common


def baseline_profile(forward, ids: torch.Tensor) -> list[torch.Tensor]:
    """S per group from a forward that appends (g1, g2) to a list (the published way)."""
    routing: list = []
    forward(ids, routing=routing)
    return [profiling.group_stats(g1.flatten(0, 1), g2.flatten(0, 1), None).S for g1, g2 in routing]


def run(configs: dict[str, dict], thread_counts: tuple[int, ...], repeats: int, batch: int = 4, seq: int = 256,
        baseline_for=None) -> Iterator[dict]:
    for label, fields in configs.items():
        for decompose in ("horizontal", "vertical"):
            yield from _case(label, fields, decompose, thread_counts, repeats, batch, seq, baseline_for)


def _case(label, fields, decompose, thread_counts, repeats, batch, seq, baseline_for) -> Iterator[dict]:
    model = common.build(fields, decompose)
    ids = common.token_ids(model, batch, seq, seed=3)
    published = baseline_for(model) if baseline_for else None
    ref = None if published else common.published_layout(model)

    def forward(ids, routing):
        if published is not None:
            return published(ids, routing=routing)
        return baseline.forward(ref, ids, routing=routing)

    fns = {"baseline": lambda: baseline_profile(forward, ids),
           "ours": lambda: profiling.profile_rows(model, ids, batch_size=batch)}
    ours, theirs = fns["ours"](), fns["baseline"]()
    for g, S in enumerate(theirs):  # the same statistics, or the comparison means nothing
        drift = float((ours.S[g] - S).abs().sum() / S.abs().sum())
        if not drift <= 1e-3:  # rounding may flip a near-threshold entry of a later group
            raise RuntimeError(f"{label} {decompose}: profile of group {g} differs by {drift:.2%}")
    tag = f"{common.TAGS[decompose]} {label}"
    for count in thread_counts:
        with common.threads(count), torch.no_grad():
            t = common.best_times(fns, repeats)
        yield common.record(
            "profile", f"{tag} profile, {count} thread(s): ours vs baseline", t["baseline"] / t["ours"],
            "speed-up (tokens/s)", config=label, decompose=decompose, threads=count,
            tokens_per_s={k: round(ids.numel() / v, 1) for k, v in t.items()})
