"""Routing-sparse expert layer: only the active (token, sub-expert) pairs are computed.

A token routes to about k sub-experts per head and side, at most H*k of E, and every other
sub-expert's slot is exactly zero in the dense layer. This path lists the active pairs grouped by
sub-expert (a Plan, built once per routing group and reused by its layers), runs one small GEMM
per sub-expert over its tokens for U (a gather) and V (a scatter-add), and mixes the heads on the
pair lists. The expert FLOPs fall from N*E*m*d to P*m*d per projection, P the active pairs (about
12% of N*E at the 1.4B shape). Masks and scales fold in as in reference.hd_mix: only the pairs
they change are corrected. The output equals the dense layer's up to float rounding.

`up` and `down` are the pure-torch grouped GEMMs (one small GEMM per sub-expert); the Triton
kernels in triton_routed are checked against them. `choose` is the cost model that decides, per
routing group, whether this path beats the dense one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import reference


class Side(NamedTuple):
    """The active pairs of one sub-expert side, grouped by sub-expert (ascending), tokens ascending."""

    tok: torch.Tensor     # [P] token of each pair
    expert: torch.Tensor  # [P] sub-expert of each pair
    gate: torch.Tensor    # [P, H] fp32 routing weight g[tok, h, expert] of each pair, per head
    counts: list[int]     # [E] pairs per sub-expert


class Plan(NamedTuple):
    """Both sides' active pairs and the pairs that masks or scales change (as pair indices)."""

    tokens: int
    side1: Side
    side2: Side
    fix: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # (p1, p2, weight removed), or None


def side(g: torch.Tensor) -> Side:
    """The pairs (n, e) with g[n, h, e] > 0 for some head h. g: [N, H, E] (non-negative)."""
    N, H, E = g.shape
    e, n = (g.sum(1) > 0).T.nonzero(as_tuple=True)
    counts = torch.bincount(e, minlength=E).tolist()
    gate = g.transpose(1, 2).reshape(N * E, H).index_select(0, n * E + e)  # one copy, then a row gather
    return Side(n, e, gate, counts)


def _pair_index(s: Side, tokens: int, experts: int) -> torch.Tensor:
    """Flat n*E + e -> index of pair (n, e) in `s` (-1 where (n, e) is not active)."""
    pos = torch.full((tokens * experts,), -1, dtype=torch.long, device=s.tok.device)
    pos[s.tok * experts + s.expert] = torch.arange(s.tok.numel(), device=s.tok.device)
    return pos


def plan(g1: torch.Tensor, g2: torch.Tensor, pairs: reference.MaskedPairs | None = None) -> Plan:
    """The routing-sparse plan of one routing group (g1, g2: [N, H, E])."""
    N, _, E = g1.shape
    s1, s2 = side(g1), side(g2)
    fix = None
    if pairs is not None:  # a changed pair has g1 and g2 non-zero at one head: both its pairs are active
        rows1, rows2, w = reference.hits(pairs, E, E)
        fix = (_pair_index(s1, N, E)[rows1], _pair_index(s2, N, E)[rows2], w)
    return Plan(N, s1, s2, fix)


# ---- cost model --------------------------------------------------------------------------

class Cost(NamedTuple):
    """Relative costs of the routed path on one kind of device, in dense-GEMM multiply-adds.

    small_gemm: a multiply-add of a per-sub-expert GEMM (narrow: width m or m/2) against one of
    the large dense GEMM; per_element: one element of a hidden row gathered (x) or scatter-added
    (y) for a pair; per_call: the fixed cost of one per-sub-expert GEMM.
    """

    small_gemm: float
    per_element: float
    per_call: float


# Fitted to single-thread CPU times of one expert layer (bench/cost.py; 2 AVX2 cores shared with
# other work): narrow GEMMs at about 0.4x the dense GEMM's rate, and a gathered or scattered element
# costing about 16 dense multiply-adds (the rows come from L3 or memory, the GEMM's from cache).
# On a quiet 2-core AVX-512 machine (2026-12-02) it picked the faster path in 15 of 16 fp32 cases
# (settled and unsettled routing, mid and 1.4B layer shapes, HD and VD, 1 and 2 threads).
CPU = Cost(small_gemm=2.5, per_element=16.0, per_call=2.0e5)
# bf16 (and other half types) on CPU, against the dense bf16 GEMM: on AVX-512 BF16 the large GEMMs
# run about 3.7x their fp32 rate while the narrow per-sub-expert ones gain nothing (they ran slower
# than in fp32), so every term costs about 5.5x more in dense-GEMM units: one expert layer at the
# mid and the 1.4B layer shapes took 1.4-6x longer routed than dense in bf16 (2026-12-02).
CPU_LOW = Cost(small_gemm=2.5 * 5.5, per_element=16.0 * 5.5, per_call=2.0e5 * 5.5)
# The C grouped GEMMs (kernels.gathered), fp32 on CPU, with the rest of the routed layer (plan,
# head mixing) in torch. Fitted to 68 timings of one expert layer, dense vs routed (2-core AVX2
# EPYC, 2026-12-02: 4 shapes from d=64, E=24 to the 1.4B layer's d=2048, E=512, HD and VD, 2 to
# E/2 sub-experts per head, 1 and 2 threads): the narrow GEMMs run at about 0.8x the dense GEMM's
# rate, and a fixed cost per sub-expert (its share of planning and mixing the pairs in torch)
# keeps small layers dense. It picks the faster path in 67 of the 68 (the miss: 1.2x left unused).
CPU_NATIVE = Cost(small_gemm=1.2, per_element=16.0, per_call=8.0e5)
# Not measured yet (no GPU has run the Triton kernels): narrow tl.dot tiles at a quarter of cuBLAS's
# rate, and the down side's fp32 atomics (one per pair and output element) at 16 multiply-adds each.
CUDA_TRITON = Cost(small_gemm=4.0, per_element=16.0, per_call=0.0)


def choose(tokens: int, pairs1: int, pairs2: int, experts: int, width: int, hidden: int,
           decompose: str = "horizontal", cost: Cost = CPU) -> bool:
    """True when the routed path should beat the dense one for a layer of this shape.

    Dense: 2 projections of N x E*m x d multiply-adds (HD and VD alike). Routed: the same over the
    P1 + P2 active pairs only, at the narrow-GEMM rate, plus the hidden rows it moves (HD gathers
    x for side-1 pairs and scatters y for side-2 pairs; VD gathers x for both sides and scatters
    both output halves) and one GEMM call per sub-expert and projection side."""
    dense = 2 * tokens * experts * width * hidden
    pairs = pairs1 + pairs2
    moved = pairs * hidden if decompose == "horizontal" else pairs * hidden * 1.5
    calls = 2 * experts if decompose == "horizontal" else 4 * experts
    routed = pairs * width * hidden * cost.small_gemm + moved * cost.per_element + calls * cost.per_call
    return routed < dense


def cpu_cost(dtype: torch.dtype) -> Cost:
    """The CPU cost constants for a compute dtype."""
    return CPU if dtype in (torch.float32, torch.float64) else CPU_LOW


def expert_plan(g1: torch.Tensor, g2: torch.Tensor, pairs: reference.MaskedPairs | None, width: int,
                hidden: int, grad: bool, decompose: str = "horizontal", dtype: torch.dtype = torch.float32,
                cost: Cost | None = None) -> Plan | None:
    """The plan when the routed path is the cheaper one for this group (experts computing in
    `dtype`, grouped GEMMs costing `cost`, default: the torch ones'), else None (dense).

    Autograd (training) always takes the dense path; so does CUDA here, where a Python loop over
    sub-experts costs far more than one cuBLAS GEMM (monet-edit's dispatcher plans for its Triton
    kernels instead)."""
    if grad or g1.is_cuda or g1.shape[0] == 0:
        return None
    cost = cost or cpu_cost(dtype)
    if not choose(g1.shape[0], *active_counts(g1, g2), g1.shape[-1], width, hidden, decompose, cost):
        return None
    return plan(g1, g2, pairs)


def active_counts(g1: torch.Tensor, g2: torch.Tensor) -> tuple[int, int]:
    """Active (token, sub-expert) pairs of each side."""
    return int((g1.sum(1) > 0).sum()), int((g2.sum(1) > 0).sum())


# ---- grouped GEMMs (pure torch) ---------------------------------------------------------
#
# One small GEMM per sub-expert, in the caller's thread with torch's intra-op threads. (Running
# contiguous shares of the sub-experts in worker threads, one torch thread each, was tried: on
# the 2-core AVX-512 machine it made the up side 2.3x slower on 2 threads than this loop, and it
# changed torch's process-wide thread count around every call.)

def up(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, s: Side) -> torch.Tensor:
    """relu2(U_e x_n + c_e) for every pair (n, e) of `s`: [P, width]. weight: [E*width, d]
    (rows expert-major), bias: [E*width]."""
    experts = len(s.counts)
    width = weight.shape[0] // experts
    w, b = weight.view(experts, width, -1), bias.view(experts, width)
    out = x.new_empty(s.tok.numel(), width)
    start = 0
    for e, count in enumerate(s.counts):
        if count:
            stop = start + count
            torch.addmm(b[e], x.index_select(0, s.tok[start:stop]), w[e].T, out=out[start:stop])
            start = stop
    return out.relu_().square_()


def expert_major(weight: torch.Tensor, experts: int) -> torch.Tensor:
    """An output projection's weight [d_out, E*width] as [E, width, d_out] (sub-expert e's rows).

    A view when the weight is stored expert-major (MonetForCausalLM.expert_major_), else one copy:
    in the published row-major layout a sub-expert's columns are `width` values every E*width, a
    stride that maps them onto a few cache sets, and reading them in place cost more than a copy."""
    t = weight.t()
    return (t if t.is_contiguous() else t.contiguous()).view(experts, -1, weight.shape[0])


def down(terms: list[tuple[torch.Tensor, torch.Tensor]], brow: torch.Tensor, bweight: torch.Tensor,
         s: Side, tokens: int) -> torch.Tensor:
    """y[n] = sum over the pairs (n, e) of `s` of sum_t W_t[:, e] slots_t[p] + bweight[p] brow[e].

    terms: (slots [P, width], W [d_out, E*width]) pairs, summed; brow: [E, d_out]; bweight: [P].
    Returns [tokens, d_out]. Per sub-expert, its pairs' rows are formed in cache (a GEMM per term
    and the bias as a rank-1 update: 1/width of the GEMM's work, where one N x E x d_out bias GEMM
    cost half of the routed down projection at the 1.4B shape) and scatter-added once."""
    experts = len(s.counts)
    (first, w0), *rest = [(slots, expert_major(w, experts)) for slots, w in terms]
    brow, bweight = brow.to(first.dtype), bweight.to(first.dtype)
    y = first.new_zeros(tokens, brow.shape[1])
    start = 0
    for e, count in enumerate(s.counts):
        if count:
            stop = start + count
            rows = torch.mm(first[start:stop], w0[e])
            for slots, w in rest:
                rows.addmm_(slots[start:stop], w[e])
            rows.addr_(bweight[start:stop], brow[e])
            y.index_add_(0, s.tok[start:stop], rows)
            start = stop
    return y


# ---- the expert layers ------------------------------------------------------------------

def _mix(gate: torch.Tensor, a: torch.Tensor, s: Side, tokens: int) -> torch.Tensor:
    """z[n, h] = sum over the pairs (n, e) of `s` of g[n, h, e] a[p]: [tokens, H, width]."""
    z = a.new_zeros(tokens, gate.shape[1], a.shape[1])
    return z.index_add_(0, s.tok, gate[:, :, None] * a[:, None, :])


def _spread(gate: torch.Tensor, z: torch.Tensor, s: Side) -> torch.Tensor:
    """slot[p] = sum_h g[n, h, e] z[n, h] for every pair (n, e) of `s`: [P, width]."""
    return (gate[:, :, None] * z.index_select(0, s.tok)).sum(1)


def hd_routed(experts: torch.nn.Module, x: torch.Tensor, p: Plan, up=up, down=down) -> torch.Tensor:
    """MonetHDExperts.forward on the active pairs only. x: [N, d] -> [N, d]."""
    s1, s2 = p.side1, p.side2
    a = up(x, experts.u.weight, experts.u.bias, s1)
    g1, g2 = s1.gate.to(a.dtype), s2.gate.to(a.dtype)
    slots = _spread(g2, _mix(g1, a, s1, p.tokens), s2)
    bias = g2.sum(1)
    if p.fix is not None:
        p1, p2, w = p.fix
        w = w.to(a.dtype)
        slots.index_add_(0, p2, a.index_select(0, p1).mul_(-w[:, None]))
        bias.index_add_(0, p2, -w)
    return down([(slots, experts.v.weight)], experts.b.to(a.dtype), bias, s2, p.tokens)


def vd_routed(experts: torch.nn.Module, x: torch.Tensor, p: Plan, up=up, down=down) -> torch.Tensor:
    """MonetVDExperts.forward on the active pairs only. x: [N, d] -> [N, d]."""
    s1, s2 = p.side1, p.side2
    a1 = up(x, experts.u1.weight, experts.u1.bias, s1)
    a2 = up(x, experts.u2.weight, experts.u2.bias, s2)
    g1, g2 = s1.gate.to(a1.dtype), s2.gate.to(a1.dtype)
    top_cross = _spread(g1, _mix(g2, a2, s2, p.tokens), s1)     # slot i: sum_h g1[h,i] sum_j g2[h,j] a2_j
    bottom_cross = _spread(g2, _mix(g1, a1, s1, p.tokens), s2)  # slot j: sum_h g2[h,j] sum_i g1[h,i] a1_i
    r1, r2 = g1.sum(1), g2.sum(1)                               # sum_j G_ij, sum_i G_ij
    if p.fix is not None:
        p1, p2, w = p.fix
        w = w.to(a1.dtype)
        r1.index_add_(0, p1, -w)
        r2.index_add_(0, p2, -w)
        top_cross.index_add_(0, p1, a2.index_select(0, p2).mul_(-w[:, None]))
        bottom_cross.index_add_(0, p2, a1.index_select(0, p1).mul_(-w[:, None]))
    top = down([(r1[:, None] * a1, experts.v11.weight), (top_cross, experts.v12.weight)],
               experts.b1.to(a1.dtype), r1, s1, p.tokens)
    bottom = down([(bottom_cross, experts.v21.weight), (r2[:, None] * a2, experts.v22.weight)],
                  experts.b2.to(a1.dtype), r2, s2, p.tokens)
    return torch.cat((top, bottom), dim=-1)
