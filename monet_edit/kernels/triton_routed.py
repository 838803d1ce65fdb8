"""Triton kernels: the grouped GEMMs of the routing-sparse expert layer (routed.up / routed.down).

The active pairs of a side are grouped by sub-expert; each program takes a tile of up to BLOCK_P
pairs of one sub-expert (the tile table is built from the counts). `up` gathers the tile's token
rows of x, multiplies them by the sub-expert's U rows (tl.dot, fp32 accumulation) and stores
relu2(. + c). `down` multiplies the tile's slots by the sub-expert's columns of each V, adds the
bias row weighted per pair, and scatter-adds into y with fp32 atomics (a token's pairs lie in
different tiles). Same contracts as routed.up / routed.down, which they are checked against.

UPCAST: Triton's CPU interpreter multiplies 16-bit float tiles as their raw integer bits in
tl.dot, so under TRITON_INTERPRET=1 the tiles are cast to fp32 first (bf16 products are exact in
fp32, as on the GPU's tensor cores); compiled kernels multiply the 16-bit tiles directly.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .routed import Side

BLOCK_P = 32  # pairs per tile (tl.dot needs at least 16 on every side)


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _tile(tile_e_ptr, tile_lo_ptr, tile_hi_ptr, tok_ptr, BLOCK_P: tl.constexpr):
    """This program's sub-expert, pair ids, their validity and their tokens."""
    t = tl.program_id(0)
    e = tl.load(tile_e_ptr + t).to(tl.int64)
    lo = tl.load(tile_lo_ptr + t)
    hi = tl.load(tile_hi_ptr + t)
    p = lo + tl.arange(0, BLOCK_P)
    valid = p < hi
    n = tl.load(tok_ptr + p, mask=valid, other=0)
    return e, p.to(tl.int64), valid, n.to(tl.int64)


@triton.jit
def _up_kernel(x_ptr, w_ptr, b_ptr, out_ptr, tok_ptr, tile_e_ptr, tile_lo_ptr, tile_hi_ptr, D, W,
               BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr):
    e, p, valid, n = _tile(tile_e_ptr, tile_lo_ptr, tile_hi_ptr, tok_ptr, BLOCK_P)
    c = tl.arange(0, BLOCK_W)
    cols = c < W
    acc = tl.zeros([BLOCK_P, BLOCK_W], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        inside = k < D
        xa = tl.load(x_ptr + n[:, None] * D + k[None, :], mask=valid[:, None] & inside[None, :], other=0.0)
        wa = tl.load(w_ptr + (e * W + c[None, :]) * D + k[:, None], mask=inside[:, None] & cols[None, :],
                     other=0.0)
        acc = _dot(xa, wa, acc, UPCAST)
    acc += tl.load(b_ptr + e * W + c, mask=cols, other=0.0).to(tl.float32)[None, :]
    acc = tl.maximum(acc, 0.0)
    out = out_ptr + p[:, None] * W + c[None, :]
    tl.store(out, (acc * acc).to(out.dtype.element_ty), mask=valid[:, None] & cols[None, :])


@triton.jit
def _term(s_ptr, w_ptr, p, valid, e, E, W, d, dcols, c, cols, acc, UPCAST: tl.constexpr):
    """acc += slots[p, :W] @ Wmat[d, e*W : (e+1)*W]^T for the tile (fp32 accumulation)."""
    s = tl.load(s_ptr + p[:, None] * W + c[None, :], mask=valid[:, None] & cols[None, :], other=0.0)
    w = tl.load(w_ptr + d[None, :] * (E * W) + e * W + c[:, None], mask=cols[:, None] & dcols[None, :], other=0.0)
    return _dot(s, w, acc, UPCAST)


@triton.jit
def _down_kernel(s0_ptr, w0_ptr, s1_ptr, w1_ptr, brow_ptr, bw_ptr, y_ptr, tok_ptr, tile_e_ptr, tile_lo_ptr,
                 tile_hi_ptr, E, W, DOUT, TWO: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr,
                 BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    e, p, valid, n = _tile(tile_e_ptr, tile_lo_ptr, tile_hi_ptr, tok_ptr, BLOCK_P)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dcols = d < DOUT
    c = tl.arange(0, BLOCK_W)
    cols = c < W
    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    acc = _term(s0_ptr, w0_ptr, p, valid, e, E, W, d, dcols, c, cols, acc, UPCAST)
    if TWO:
        acc = _term(s1_ptr, w1_ptr, p, valid, e, E, W, d, dcols, c, cols, acc, UPCAST)
    bw = tl.load(bw_ptr + p, mask=valid, other=0.0).to(tl.float32)
    brow = tl.load(brow_ptr + e * DOUT + d, mask=dcols, other=0.0).to(tl.float32)
    acc += bw[:, None] * brow[None, :]
    tl.atomic_add(y_ptr + n[:, None] * DOUT + d[None, :], acc, mask=valid[:, None] & dcols[None, :])


def tiles(s: Side) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sub-expert, first pair, end of its pairs) of every tile of up to BLOCK_P pairs."""
    device = s.tok.device
    counts = torch.tensor(s.counts, dtype=torch.long, device=device)
    starts = torch.cumsum(counts, 0) - counts
    per = (counts + BLOCK_P - 1) // BLOCK_P
    expert = torch.repeat_interleave(torch.arange(len(s.counts), device=device), per)
    first_tile = torch.cumsum(per, 0) - per
    lo = starts[expert] + (torch.arange(expert.numel(), device=device) - first_tile[expert]) * BLOCK_P
    hi = (starts + counts)[expert]
    return expert.to(torch.int32), lo.to(torch.int32), hi.to(torch.int32)


def _upcast() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _block(n: int, low: int = 16, high: int = 128) -> int:
    return max(low, min(high, triton.next_power_of_2(n)))


def up(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, s: Side) -> torch.Tensor:
    """routed.up on the GPU: relu2(U_e x_n + c_e) per pair, [P, width]."""
    experts = len(s.counts)
    width = weight.shape[0] // experts
    x, weight, bias = x.contiguous(), weight.contiguous(), bias.contiguous()
    out = torch.empty(s.tok.numel(), width, dtype=x.dtype, device=x.device)
    expert, lo, hi = tiles(s)
    if expert.numel():
        _up_kernel[(expert.numel(),)](x, weight, bias, out, s.tok, expert, lo, hi, x.shape[1], width,
                                      BLOCK_P=BLOCK_P, BLOCK_W=_block(width), BLOCK_K=_block(x.shape[1], high=64),
                                      UPCAST=_upcast())
    return out


def down(terms: list[tuple[torch.Tensor, torch.Tensor]], brow: torch.Tensor, bweight: torch.Tensor,
         s: Side, tokens: int) -> torch.Tensor:
    """routed.down on the GPU (one or two terms): [tokens, d_out]."""
    if len(terms) not in (1, 2):
        raise ValueError("the Triton down kernel takes one or two (slots, weight) terms")
    experts = len(s.counts)
    (s0, w0), *rest = [(t.contiguous(), w.contiguous()) for t, w in terms]
    s1, w1 = rest[0] if rest else (s0, w0)
    d_out, width = w0.shape[0], s0.shape[1]
    y = torch.zeros(tokens, d_out, dtype=torch.float32, device=s0.device)
    expert, lo, hi = tiles(s)
    block_d = _block(d_out, high=64)
    if expert.numel():
        _down_kernel[(expert.numel(), triton.cdiv(d_out, block_d))](
            s0, w0, s1, w1, brow.contiguous(), bweight.contiguous(), y, s.tok, expert, lo, hi, experts, width,
            d_out, TWO=bool(rest), BLOCK_P=BLOCK_P, BLOCK_W=_block(width), BLOCK_D=block_d,
            UPCAST=_upcast())
    return y.to(s0.dtype)
