"""Sparse expert path for a few tokens (batch-1 generation).

With N tokens at most N*H*k of the E sub-experts per side carry weight, so instead of the full
U x (E*m rows) and V . slots (E*m columns) this path gathers only the active sub-experts' rows of
U (and, on CUDA, columns of V) and mixes over those. Same output as the dense layer (zero-weight
slots are exactly zero there); it reads a fraction of the weights, which bounds batch-1 speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch
from .reference import MaskedPairs


def active(g: torch.Tensor) -> torch.Tensor:
    """Ids of the sub-experts that carry weight for any token and head of g [N, H, E]."""
    return (g != 0).flatten(0, -2).any(0).nonzero().squeeze(1)


def _positions(ids: torch.Tensor, experts: int) -> torch.Tensor:
    """Map sub-expert id -> its position in `ids` (0 for ids not in it; those have zero weight)."""
    pos = torch.zeros(experts, dtype=torch.long, device=ids.device)
    pos[ids] = torch.arange(ids.numel(), device=ids.device)
    return pos


def _restrict(pairs: MaskedPairs | None, ids1: torch.Tensor, ids2: torch.Tensor, experts: int
              ) -> MaskedPairs | None:
    if pairs is None:
        return None
    pos1, pos2 = _positions(ids1, experts), _positions(ids2, experts)
    return pairs.remap(pos1, pos2)


def _up(layer: torch.nn.Linear, x: torch.Tensor, ids: torch.Tensor, experts: int) -> torch.Tensor:
    """relu2 of the rows of `layer` (expert-major, E blocks) that belong to sub-experts `ids`."""
    width = layer.out_features // experts
    w = layer.weight.view(experts, width, -1).index_select(0, ids).flatten(0, 1)
    b = layer.bias.view(experts, width).index_select(0, ids).flatten()
    return F.relu(F.linear(x, w, b)).square().view(x.shape[0], ids.numel(), width)


def _down(layer: torch.nn.Linear, slots: torch.Tensor, ids: torch.Tensor, experts: int) -> torch.Tensor:
    """`layer` applied to slots [N, len(ids), m] of sub-experts `ids` (all other slots are zero).

    On CUDA it reads only those sub-experts' columns. On CPU a column gather of the row-major
    weight (chunks of m values) costs more than the dense product itself (bench/run.py measures
    the path), so there the slots are scattered back to full width for one dense GEMV.
    """
    if slots.is_cuda:
        w = layer.weight.view(layer.out_features, experts, -1).index_select(1, ids).flatten(1)
        return F.linear(slots.flatten(1), w)
    full = slots.new_zeros(slots.shape[0], experts, slots.shape[-1]).index_copy_(1, ids, slots)
    return F.linear(full.flatten(1), layer.weight)


def hd_sparse(experts: torch.nn.Module, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor,
              pairs: MaskedPairs | None) -> torch.Tensor:
    """MonetHDExperts.forward on the active sub-experts only. x: [N, d] -> [N, d]."""
    E = g1.shape[-1]
    ids1, ids2 = active(g1), active(g2)
    a = _up(experts.u, x, ids1, E)
    slots, bias = dispatch.hd_mix(a, g1.index_select(-1, ids1), g2.index_select(-1, ids2),
                                  _restrict(pairs, ids1, ids2, E))
    return _down(experts.v, slots, ids2, E) + bias @ experts.b.index_select(0, ids2).to(slots.dtype)


def vd_sparse(experts: torch.nn.Module, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor,
              pairs: MaskedPairs | None) -> torch.Tensor:
    """MonetVDExperts.forward on the active sub-experts only. x: [N, d] -> [N, d]."""
    E = g1.shape[-1]
    ids1, ids2 = active(g1), active(g2)
    a1, a2 = _up(experts.u1, x, ids1, E), _up(experts.u2, x, ids2, E)
    mix = dispatch.vd_mix(a1, a2, g1.index_select(-1, ids1), g2.index_select(-1, ids2),
                          _restrict(pairs, ids1, ids2, E))
    top = (_down(experts.v11, mix.top_self, ids1, E) + _down(experts.v12, mix.top_cross, ids1, E)
           + mix.bias1 @ experts.b1.index_select(0, ids1).to(a1.dtype))
    bottom = (_down(experts.v21, mix.bottom_cross, ids2, E) + _down(experts.v22, mix.bottom_self, ids2, E)
              + mix.bias2 @ experts.b2.index_select(0, ids2).to(a1.dtype))
    return torch.cat((top, bottom), dim=-1)
