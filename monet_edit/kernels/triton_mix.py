"""Triton kernels: the expert mixing of HD and VD, with masked experts folded in.

One program per token. It reads that token's activations once to form the per-head mixes
z_h = sum_i g1[h, i] a_i (and, for VD, the g2 side), spreads them onto the output slots with the
other side's weights, then subtracts the masked active pairs (MaskedPairs, a few per token) from
the slots and bias weights with atomics, so masking adds only those rows' work. Accumulation is
fp32 whatever the activation dtype; outputs have the activations' dtype. Same contracts as
reference.hd_mix / reference.vd_mix.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import MaskedPairs, VDMix

TILE = 8192  # elements of the [heads, experts, width] product a program holds at once


@triton.jit
def _load_g(g_ptr, n, H, E, h, e):
    """[BLOCK_H, BLOCK_E] routing weights of token n (fp32, zero outside)."""
    inside = (h < H)[:, None] & (e < E)[None, :]
    return tl.load(g_ptr + n * H * E + h[:, None] * E + e[None, :], mask=inside, other=0.0)


@triton.jit
def _rows_ptr(base_ptr, n, E, M, rows, m):
    return base_ptr + n * E * M + rows[:, None] * M + m[None, :]


@triton.jit
def _mix_heads(g_ptr, a_ptr, n, H, E, M, h, m, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr,
               BLOCK_M: tl.constexpr):
    """z[h, :] = sum_i g[n, h, i] a[n, i, :] in fp32, [BLOCK_H, BLOCK_M]."""
    z = tl.zeros([BLOCK_H, BLOCK_M], dtype=tl.float32)
    for e0 in range(0, E, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        g = _load_g(g_ptr, n, H, E, h, e)
        a = tl.load(_rows_ptr(a_ptr, n, E, M, e, m), mask=(e < E)[:, None] & (m < M)[None, :], other=0.0)
        z += tl.sum(g[:, :, None] * a.to(tl.float32)[None, :, :], axis=1)
    return z


@triton.jit
def _pair_block(w_ptr, i1_ptr, i2_ptr, n, H, K1, K2, p0, BLOCK_P: tl.constexpr):
    """Weights, sub-expert ids and validity of masked pairs p0 .. p0+BLOCK_P of token n."""
    p = p0 + tl.arange(0, BLOCK_P)
    P = H * K1 * K2
    w = tl.load(w_ptr + n * P + p, mask=p < P, other=0.0)
    hit = (p < P) & (w != 0)
    head = p // (K1 * K2)
    i = tl.load(i1_ptr + n * H * K1 + head * K1 + (p % (K1 * K2)) // K2, mask=hit, other=0)
    j = tl.load(i2_ptr + n * H * K2 + head * K2 + p % K2, mask=hit, other=0)
    return w, i, j, hit


@triton.jit
def _subtract_rows(out_ptr, src_ptr, w, dst, src, hit, n, E_out, E_src, M, m):
    """out[n, dst] -= w * src_tensor[n, src] for a block of pairs (rows of width M)."""
    inside = hit[:, None] & (m < M)[None, :]
    rows = tl.load(_rows_ptr(src_ptr, n, E_src, M, src, m), mask=inside, other=0.0).to(tl.float32)
    out = _rows_ptr(out_ptr, n, E_out, M, dst, m)
    tl.atomic_add(out, (-w[:, None] * rows).to(out.dtype.element_ty), mask=inside)


@triton.jit
def _spread(g_ptr, z, out_ptr, sum_ptr, n, H, E, M, h, m, BLOCK_E: tl.constexpr):
    """out[n, e, :] = sum_h g[n, h, e] z[h, :] and sum[n, e] = sum_h g[n, h, e], for all e < E."""
    for e0 in range(0, E, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        g = _load_g(g_ptr, n, H, E, h, e)
        out = _rows_ptr(out_ptr, n, E, M, e, m)
        tl.store(out, tl.sum(g[:, :, None] * z[:, None, :], axis=0).to(out.dtype.element_ty),
                 mask=(e < E)[:, None] & (m < M)[None, :])
        tl.store(sum_ptr + n * E + e, tl.sum(g, axis=0).to(sum_ptr.dtype.element_ty), mask=e < E)


@triton.jit
def _scale(r_ptr, a_ptr, out_ptr, n, E, M, m, BLOCK_E: tl.constexpr):
    """out[n, e, :] = r[n, e] * a[n, e, :] for all e < E."""
    for e0 in range(0, E, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        inside = (e < E)[:, None] & (m < M)[None, :]
        r = tl.load(r_ptr + n * E + e, mask=e < E, other=0.0).to(tl.float32)
        a = tl.load(_rows_ptr(a_ptr, n, E, M, e, m), mask=inside, other=0.0).to(tl.float32)
        out = _rows_ptr(out_ptr, n, E, M, e, m)
        tl.store(out, (r[:, None] * a).to(out.dtype.element_ty), mask=inside)


@triton.jit
def _hd_kernel(a_ptr, g1_ptr, g2_ptr, slots_ptr, bias_ptr, w_ptr, i1_ptr, i2_ptr, H, E1, E2, M, K1, K2,
               HAS_PAIRS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    m = tl.arange(0, BLOCK_M)
    z = _mix_heads(g1_ptr, a_ptr, n, H, E1, M, h, m, BLOCK_H, BLOCK_E, BLOCK_M)
    _spread(g2_ptr, z, slots_ptr, bias_ptr, n, H, E2, M, h, m, BLOCK_E)
    if HAS_PAIRS:
        tl.debug_barrier()
        for p0 in range(0, H * K1 * K2, BLOCK_P):
            w, i, j, hit = _pair_block(w_ptr, i1_ptr, i2_ptr, n, H, K1, K2, p0, BLOCK_P)
            _subtract_rows(slots_ptr, a_ptr, w, j, i, hit, n, E2, E1, M, m)
            tl.atomic_add(bias_ptr + n * E2 + j, (-w).to(bias_ptr.dtype.element_ty), mask=hit)


@triton.jit
def _vd_kernel(a1_ptr, a2_ptr, g1_ptr, g2_ptr, top_self_ptr, top_cross_ptr, bottom_cross_ptr,
               bottom_self_ptr, r1_ptr, r2_ptr, w_ptr, i1_ptr, i2_ptr, H, E1, E2, M, K1, K2,
               HAS_PAIRS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    m = tl.arange(0, BLOCK_M)
    z1 = _mix_heads(g1_ptr, a1_ptr, n, H, E1, M, h, m, BLOCK_H, BLOCK_E, BLOCK_M)
    z2 = _mix_heads(g2_ptr, a2_ptr, n, H, E2, M, h, m, BLOCK_H, BLOCK_E, BLOCK_M)
    _spread(g1_ptr, z2, top_cross_ptr, r1_ptr, n, H, E1, M, h, m, BLOCK_E)
    _spread(g2_ptr, z1, bottom_cross_ptr, r2_ptr, n, H, E2, M, h, m, BLOCK_E)
    if HAS_PAIRS:
        tl.debug_barrier()
        for p0 in range(0, H * K1 * K2, BLOCK_P):
            w, i, j, hit = _pair_block(w_ptr, i1_ptr, i2_ptr, n, H, K1, K2, p0, BLOCK_P)
            _subtract_rows(top_cross_ptr, a2_ptr, w, i, j, hit, n, E1, E2, M, m)
            _subtract_rows(bottom_cross_ptr, a1_ptr, w, j, i, hit, n, E2, E1, M, m)
            tl.atomic_add(r1_ptr + n * E1 + i, (-w).to(r1_ptr.dtype.element_ty), mask=hit)
            tl.atomic_add(r2_ptr + n * E2 + j, (-w).to(r2_ptr.dtype.element_ty), mask=hit)
    tl.debug_barrier()  # the self slots read the (masked) row sums written above
    _scale(r1_ptr, a1_ptr, top_self_ptr, n, E1, M, m, BLOCK_E)
    _scale(r2_ptr, a2_ptr, bottom_self_ptr, n, E2, M, m, BLOCK_E)


def _blocks(heads: int, experts: int, width: int) -> dict[str, int]:
    block_h = triton.next_power_of_2(heads)
    block_m = triton.next_power_of_2(width)
    block_e = max(1, min(triton.next_power_of_2(experts), TILE // (block_h * block_m)))
    return dict(BLOCK_H=block_h, BLOCK_E=block_e, BLOCK_M=block_m, BLOCK_P=max(1, min(256, TILE // block_m)))


def _out_dtype(like: torch.Tensor, pairs: MaskedPairs | None) -> torch.dtype:
    """Dtype the kernel writes: the activations', except that the interpreter has no 16-bit
    atomics, so there masked 16-bit outputs are staged in fp32 and cast afterwards."""
    if pairs is None or like.is_cuda or like.dtype == torch.float32:
        return like.dtype
    return torch.float32


def _pair_args(pairs: MaskedPairs | None, like: torch.Tensor) -> tuple:
    """Kernel arguments for the masked pairs (dummies when there are none)."""
    if pairs is None:
        return like, like, like, 1, 1
    w, i1, i2 = pairs.weight.float().contiguous(), pairs.idx1.contiguous(), pairs.idx2.contiguous()
    return w, i1, i2, i1.shape[-1], i2.shape[-1]


def hd_mix(a: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, pairs: MaskedPairs | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """HD mixing: (slots [N, E, m], bias [N, E]); see reference.hd_mix."""
    a = a.contiguous()
    g1, g2 = g1.float().contiguous(), g2.float().contiguous()
    N, E1, M = a.shape
    H, E2 = g2.shape[1:]
    dtype = _out_dtype(a, pairs)
    slots = torch.empty(N, E2, M, dtype=dtype, device=a.device)
    bias = torch.empty(N, E2, dtype=dtype, device=a.device)
    w, i1, i2, k1, k2 = _pair_args(pairs, g1)
    if N:
        _hd_kernel[(N,)](a, g1, g2, slots, bias, w, i1, i2, H, E1, E2, M, k1, k2,
                         HAS_PAIRS=pairs is not None, **_blocks(H, max(E1, E2), M))
    return slots.to(a.dtype), bias.to(a.dtype)


def vd_mix(a1: torch.Tensor, a2: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor,
           pairs: MaskedPairs | None = None) -> VDMix:
    """VD mixing: the six VDMix tensors; see reference.vd_mix."""
    a1, a2 = a1.contiguous(), a2.contiguous()
    g1, g2 = g1.float().contiguous(), g2.float().contiguous()
    N, E1, M = a1.shape
    H, E2 = g2.shape[1:]
    dtype = _out_dtype(a1, pairs)
    top_self, top_cross = (torch.empty(N, E1, M, dtype=dtype, device=a1.device) for _ in range(2))
    bottom_cross, bottom_self = (torch.empty(N, E2, M, dtype=dtype, device=a1.device) for _ in range(2))
    r1 = torch.empty(N, E1, dtype=dtype, device=a1.device)
    r2 = torch.empty(N, E2, dtype=dtype, device=a1.device)
    w, i1, i2, k1, k2 = _pair_args(pairs, g1)
    if N:
        _vd_kernel[(N,)](a1, a2, g1, g2, top_self, top_cross, bottom_cross, bottom_self, r1, r2,
                         w, i1, i2, H, E1, E2, M, k1, k2,
                         HAS_PAIRS=pairs is not None, **_blocks(H, max(E1, E2), M))
    return VDMix(*(t.to(a1.dtype) for t in (top_self, top_cross, bottom_cross, bottom_self, r1, r2)))
