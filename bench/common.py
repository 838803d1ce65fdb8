"""What every figure shares: model shapes, settled random models, interleaved timing, records."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from monet_edit.model.config import MonetConfig
from monet_edit.model.monet import MonetForCausalLM

# The mid config of issue 16: 4 layers in 2 routing groups, E=128, H=4, m=16, k=8, vocab 8192.
MID = dict(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8, moe_dim=16,
           moe_experts=128, moe_groups=2, moe_heads=4, moe_topk=8, max_position_embeddings=1024)
# A 2-layer slice of the released 1.4B shape (d=2048, E=512, H=8, m=16, 16 attention heads), one
# routing group; weights far larger than the CPU caches, as in the real model.
WIDE = dict(MID, hidden_size=2048, num_attention_heads=16, moe_experts=512, moe_heads=8, num_hidden_layers=2)
# Smoke-test sizes (tests/test_bench.py and --quick).
QUICK = dict(MID, vocab_size=500, hidden_size=64, num_attention_heads=4, moe_dim=4, moe_experts=24, moe_heads=2,
             moe_topk=2, num_hidden_layers=2, max_position_embeddings=256)
CONFIGS = {"mid": MID, "wide": WIDE, "quick": QUICK}
TAGS = {"horizontal": "HD", "vertical": "VD"}


def build(fields: dict, decompose: str, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
          settle_tokens: int = 2048) -> MonetForCausalLM:
    """A random model whose router statistics are SETTLED: each BatchNorm's running mean and
    variance are set to those of its own scores over random text, so about k of E sub-experts per
    head pass the threshold, as in a trained Monet. An unsettled random router (statistics 0 and 1)
    routes to ~half of E and says nothing about real checkpoints."""
    cfg = MonetConfig(**fields, moe_decompose=decompose).validate()
    model = MonetForCausalLM(cfg).init_weights(seed).to(device=device, dtype=dtype)
    for router in model.model.routers():
        for norm in (router.norm1, router.norm2):
            norm.float()
            norm.momentum = 1.0  # one training-mode step copies the batch statistics
    seq = min(256, cfg.max_position_embeddings)
    ids = torch.randint(0, cfg.vocab_size, (max(1, settle_tokens // seq), seq),
                        generator=torch.Generator().manual_seed(seed + 1)).to(device)
    model.train()
    with torch.no_grad():
        model.model(ids)
    for router in model.model.routers():
        router.norm1.momentum = router.norm2.momentum = 0.1
    if device == "cpu":  # as load_model stores them
        model.expert_major_()
    return model.eval()


def published_layout(model: MonetForCausalLM) -> MonetForCausalLM:
    """A copy of `model` with its weights in the published row-major layout (undoing
    expert_major_), for the baseline to run on what the published implementation would load."""
    import copy

    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.data = p.data.contiguous()
    return ref


def bf16_copy(model: MonetForCausalLM) -> MonetForCausalLM:
    """A bf16 copy of `model` as load_model makes one (BatchNorm routing statistics stay fp32)."""
    import copy

    low = copy.deepcopy(model).to(torch.bfloat16)
    for router in low.model.routers():
        router.norm1.float()
        router.norm2.float()
    return low


def random_masks(model: MonetForCausalLM, fraction: float, seed: int = 0) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    E = model.config.moe_experts
    return {g: torch.rand(E, E, generator=gen) < fraction for g in range(model.config.num_groups)}


def token_ids(model: MonetForCausalLM, batch: int, seq: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def active_per_head(model: MonetForCausalLM, ids: torch.Tensor) -> float:
    """Mean active sub-experts per token, head and side over the first routing group."""
    with torch.no_grad():
        g1, g2 = model(ids, output_routing=True).routing[0]
    return float(((g1 > 0).sum(-1).float().mean() + (g2 > 0).sum(-1).float().mean()) / 2)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over `repeats` interleaved rounds (after one warm-up round),
    so that a machine shared with other work slows every variant alike."""
    best = {name: float("inf") for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


@contextmanager
def env(**values: str) -> Iterator[None]:
    """Temporarily set environment variables (the kernel switches)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def threads(count: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def with_masks(model: MonetForCausalLM, masks: dict | None, fn: Callable[[], object]) -> object:
    """Run fn with `masks` installed on model, then remove them."""
    model.set_masks(masks)
    try:
        return fn()
    finally:
        model.set_masks(None)


def record(figure: str, name: str, ratio: float, meaning: str, target: str | None = None,
           ok: bool | None = None, **extra) -> dict:
    """One result line: a ratio measured in this run, what it means, its target and whether it is
    met (`ok`: from the target, or the figure's own verdict when it has no numeric target)."""
    ok = ok if target is None else _meets(ratio, target)
    return dict(figure=figure, name=name, ratio=round(ratio, 3), meaning=meaning, target=target, ok=ok, **extra)


def _meets(value: float, target: str) -> bool:
    op, bound = target.split()
    return {">=": value >= float(bound), "<=": value <= float(bound)}[op]


def flops_per_token(cfg: MonetConfig, seq: int, expert_share: float = 1.0, lm_head: bool = True,
                    layers: int | None = None) -> float:
    """Forward FLOPs per token: 2 x every matmul weight (the expert projections scaled by
    `expert_share`, the fraction of (token, sub-expert) pairs computed: 1 when dense), attention
    scores and values of a causal row (2 x 2 x seq/2 x d per layer), routers, lm_head."""
    d = cfg.hidden_size
    L = cfg.num_hidden_layers if layers is None else layers
    attn = d * cfg.head_dim * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) + d * d
    routers = len([i for i in range(L) if i % cfg.moe_groups == 0]) * 2 * d * cfg.moe_heads * cfg.moe_experts
    experts = L * 2 * d * cfg.moe_experts * cfg.moe_dim * expert_share
    weights = L * attn + experts + routers + (d * cfg.vocab_size if lm_head else 0)
    return 2 * weights + L * 2 * seq * d


def gemm_peak(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """This machine's measured GEMM rate (FLOP/s) at size x size, best of `repeats`."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(dtype) for _ in range(2))
    t = best_times({"gemm": lambda: a @ b}, repeats)["gemm"]
    return 2 * size**3 / t
