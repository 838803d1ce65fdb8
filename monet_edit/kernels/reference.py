"""Pure-torch reference of Monet's routing and expert mixing.

These functions define the semantics every accelerated kernel is tested against. Shapes use
N tokens, H router heads, E sub-experts per side, m (or m/2) activation width per sub-expert.

Masking never expands the E*E experts: only the pairs (i, j) where both
g1[h, i] and g2[h, j] are non-zero can carry weight, at most H*k1*k2 per token, and the masked
part of those is subtracted from the mixed activations before the output projection.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

BN_EPS = 1e-5


def routing_threshold(topk: int, experts: int) -> float:
    """sigma = ndtri(1 - k/E): the normalised score above which about k of E entries lie."""
    return float(torch.special.ndtri(torch.tensor(1.0 - topk / experts, dtype=torch.float64, device="cpu")))


def route(z: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, sigma: float,
          normed: torch.Tensor | None = None) -> torch.Tensor:
    """Router post-processing in fp32: BatchNorm threshold, then softmax of raw z over kept entries.

    z: [N, H, E] raw router scores. running_mean, running_var: [H]. Returns g: [N, H, E], each row
    summing to 1 with at least one non-zero. `normed` overrides the eval-mode normalisation (the
    training path passes batch-normalised scores).
    """
    z = z.float()
    if normed is None:
        normed = (z - running_mean.float()[:, None]) / torch.sqrt(running_var.float()[:, None] + BN_EPS)
    thresh = normed.amax(dim=-1, keepdim=True).clamp(max=sigma)
    return torch.softmax(z.masked_fill(normed < thresh, -math.inf), dim=-1)


class MaskedPairs(NamedTuple):
    """The masked share of the active expert pairs of each token and head.

    idx1: [N, H, K1] g1-side sub-expert ids; idx2: [N, H, K2] g2-side ids;
    weight: [N, H, K1, K2] = g1[h, idx1] * g2[h, idx2] where (idx1, idx2) is masked, else 0.
    Summing weight over heads gives the composite G_ij of each masked active expert.
    """

    idx1: torch.Tensor
    idx2: torch.Tensor
    weight: torch.Tensor


def _active(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and ids of the non-zero entries of each row (padded with zeros to the row maximum)."""
    k = int((g > 0).sum(-1).max().item()) if g.numel() else 1
    values, ids = g.topk(max(k, 1), dim=-1)
    return values, ids


def masked_pairs(g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor) -> MaskedPairs | None:
    """Active (token, head, i, j) pairs whose expert is masked; None when nothing masked is active."""
    v1, i1 = _active(g1)
    v2, i2 = _active(g2)
    E = mask.shape[1]
    hit = mask.reshape(-1)[(i1.unsqueeze(-1) * E + i2.unsqueeze(-2)).reshape(-1)].view(
        *i1.shape, i2.shape[-1])
    if not bool(hit.any()):
        return None
    weight = torch.where(hit, v1.unsqueeze(-1) * v2.unsqueeze(-2), 0.0)
    return MaskedPairs(i1, i2, weight)


def _hits(pairs: MaskedPairs, experts1: int, experts2: int
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masked active pairs as flat row ids n*E1 + i and n*E2 + j, with their weights.

    Only the pairs that are masked carry a non-zero weight, a few percent of the active ones, so
    the correction touches those rows alone instead of every active (token, head, i, j).
    """
    n, h, a, b = pairs.weight.nonzero(as_tuple=True)
    return n * experts1 + pairs.idx1[n, h, a], n * experts2 + pairs.idx2[n, h, b], pairs.weight[n, h, a, b]


def _subtract_rows(out: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, src: torch.Tensor | None = None,
                   src_rows: torch.Tensor | None = None) -> None:
    """out.flat[rows] -= w (* src.flat[src_rows]) for out [N, E] or [N, E, m], in place."""
    if src is None:
        out.view(-1).index_add_(0, rows, -w)
    else:
        width = src.shape[-1]
        out.view(-1, width).index_add_(0, rows, -w[:, None] * src.reshape(-1, width)[src_rows])


def hd_mix(a: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, pairs: MaskedPairs | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal decomposition mixing.

    a: [N, E, m] = relu2(U x + c) per g1-side sub-expert. Returns (slots [N, E, m], bias [N, E]):
    the layer output is V . flatten(slots) + bias @ b, with slot j = sum_i G_ij a_i over unmasked
    experts and bias[j] = sum_i G_ij.
    """
    g1 = g1.to(a.dtype)
    g2 = g2.to(a.dtype)
    z = torch.bmm(g1, a)                              # [N, H, m]: sum_i g1[h, i] a_i
    slots = torch.bmm(g2.transpose(1, 2), z)          # [N, E, m]: sum_h g2[h, j] z_h
    bias = g2.sum(1)                                  # [N, E]
    if pairs is not None:
        rows1, rows2, w = _hits(pairs, g1.shape[-1], g2.shape[-1])
        w = w.to(a.dtype)
        _subtract_rows(slots, rows2, w, a, rows1)
        _subtract_rows(bias, rows2, w)
    return slots, bias


class VDMix(NamedTuple):
    """Inputs of the four VD output projections and the two bias weightings (see vd_mix)."""

    top_self: torch.Tensor     # [N, E, m/2] -> v11 (slot i: a1_i weighted by sum_j G_ij)
    top_cross: torch.Tensor    # [N, E, m/2] -> v12 (slot i: sum_j G_ij a2_j)
    bottom_cross: torch.Tensor  # [N, E, m/2] -> v21 (slot j: sum_i G_ij a1_i)
    bottom_self: torch.Tensor  # [N, E, m/2] -> v22 (slot j: a2_j weighted by sum_i G_ij)
    bias1: torch.Tensor        # [N, E] weights of b1 rows: sum_j G_ij
    bias2: torch.Tensor        # [N, E] weights of b2 rows: sum_i G_ij


def vd_mix(a1: torch.Tensor, a2: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor,
           pairs: MaskedPairs | None = None) -> VDMix:
    """Vertical decomposition mixing. a1, a2: [N, E, m/2] (relu2 of U1 x + c1, U2 x + c2)."""
    g1 = g1.to(a1.dtype)
    g2 = g2.to(a1.dtype)
    r1 = g1.sum(1)                                    # [N, E] sum_j G_ij (rows of g2 sum to 1)
    r2 = g2.sum(1)
    z1 = torch.bmm(g1, a1)                            # [N, H, m/2]
    z2 = torch.bmm(g2, a2)
    top_cross = torch.bmm(g1.transpose(1, 2), z2)     # slot i: sum_h g1[h,i] sum_j g2[h,j] a2_j
    bottom_cross = torch.bmm(g2.transpose(1, 2), z1)  # slot j: sum_h g2[h,j] sum_i g1[h,i] a1_i
    if pairs is not None:
        rows1, rows2, w = _hits(pairs, g1.shape[-1], g2.shape[-1])
        w = w.to(a1.dtype)
        _subtract_rows(r1, rows1, w)
        _subtract_rows(r2, rows2, w)
        _subtract_rows(top_cross, rows1, w, a2, rows2)
        _subtract_rows(bottom_cross, rows2, w, a1, rows1)
    return VDMix(r1.unsqueeze(-1) * a1, top_cross, bottom_cross, r2.unsqueeze(-1) * a2, r1, r2)
