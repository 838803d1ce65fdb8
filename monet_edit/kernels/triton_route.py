"""Triton kernel: the router's post-processing fused (BatchNorm threshold + masked softmax).

One pass over z: normalise with the running statistics, threshold at min(row max, sigma), softmax
of the raw scores over the kept entries. Normalisation uses round-to-nearest sqrt and division so
the kept set is bit-identical to the reference's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import BN_EPS


@triton.jit
def _route_kernel(z_ptr, mean_ptr, var_ptr, g_ptr, rows, H, E, sigma, eps,
                  BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # row = token * H + head
    e = tl.arange(0, BLOCK_E)
    inside = (r < rows)[:, None] & (e < E)[None, :]
    lanes = (e < E)[None, :]  # padded rows compute on zeros (no NaNs) and are never stored
    offs = r[:, None] * E + e[None, :]
    z = tl.load(z_ptr + offs, mask=inside, other=0.0)
    head = r % H
    mean = tl.load(mean_ptr + head, mask=r < rows, other=0.0)
    std = tl.sqrt_rn(tl.load(var_ptr + head, mask=r < rows, other=1.0) + eps)
    normed = tl.where(lanes, tl.div_rn(z - mean[:, None], std[:, None]), -float("inf"))
    thresh = tl.minimum(tl.max(normed, axis=1), sigma)
    keep = lanes & (normed >= thresh[:, None])
    kept = tl.where(keep, z, -float("inf"))
    p = tl.where(keep, tl.exp(kept - tl.max(kept, axis=1)[:, None]), 0.0)
    tl.store(g_ptr + offs, p / tl.sum(p, axis=1)[:, None], mask=inside)


def route(z: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eval-mode routing of z [N, H, E] (fp32 out); same contract as reference.route."""
    z = z.float().contiguous()
    N, H, E = z.shape
    g = torch.empty_like(z)
    rows = N * H
    block_e = triton.next_power_of_2(E)
    block_r = max(1, min(16, 4096 // block_e))
    if rows:
        _route_kernel[(triton.cdiv(rows, block_r),)](
            z, running_mean.float().contiguous(), running_var.float().contiguous(), g, rows, H, E,
            float(sigma), BN_EPS, BLOCK_R=block_r, BLOCK_E=block_e)
    return g
