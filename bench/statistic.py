"""The profile statistic S = sum_t G(t) as one GEMM vs the per-token E*E expansion (target >= 20x)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from monet_edit import kernels

from . import common


def run(experts: int, heads: int, topk: int, tokens: int, repeats: int) -> Iterator[dict]:
    gen = torch.Generator().manual_seed(4)
    sigma = kernels.routing_threshold(topk, experts)
    g1, g2 = (kernels.route(torch.randn(tokens, heads, experts, generator=gen), torch.zeros(heads),
                            torch.ones(heads), sigma) for _ in range(2))

    def gemm():
        return g1.reshape(-1, experts).T @ g2.reshape(-1, experts)

    def naive(chunk=8):
        S = torch.zeros(experts, experts)
        for s in range(0, tokens, chunk):
            S += torch.einsum("thi,thj->thij", g1[s:s + chunk], g2[s:s + chunk]).sum((0, 1))
        return S

    torch.testing.assert_close(gemm(), naive(), atol=1e-4, rtol=1e-4)
    t = common.best_times({"gemm": gemm, "naive": naive}, repeats)
    yield common.record("statistic", f"profile statistic: GEMM vs per-token E*E expansion (E={experts}, "
                        f"{tokens} tokens)", t["naive"] / t["gemm"], "speed-up", ">= 20")
