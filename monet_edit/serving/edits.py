"""A checkpoint's expert edits (masks and per-expert scales) as the serving model applies them.

A routing group may carry `model.layers.L.router.expert_mask` (bool [E, E], True = off) and
`model.layers.L.router.expert_scale` (float32 [E, E]: 1 unchanged, 0 off, (0, 1) attenuated, > 1
amplified), L being the group's first layer. Expert (i, j) then has the routing weight
G_ij * scale_ij, and 0 where masked. Only the change matters: delta = scale * (not mask) - 1,
non-zero on the edited experts alone. As in monet-edit's own model the E*E experts are never
expanded: per token only the active pairs (g1[h, i] and g2[h, j] both non-zero) that are edited
get a correction, weighted delta_ij * g1[h, i] * g2[h, j].
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..model.checkpoint import EDIT_KEY


def check_edit(name: str, tensor: torch.Tensor, layers: int, group_size: int, experts: int) -> int:
    """The routing layer an edit tensor belongs to; ValueError naming the tensor when it is wrong."""
    m = EDIT_KEY.match(name)
    if m is None:
        raise ValueError(f"{name} is not an expert mask or scale tensor")
    layer, kind = int(m.group(1)), m.group(2)
    if layer >= layers or layer % group_size:
        raise ValueError(f"{name}: layer {layer} is not the first layer of a routing group "
                         f"(groups of {group_size} of {layers} layers)")
    if tuple(tensor.shape) != (experts, experts):
        raise ValueError(f"{name} has shape {list(tensor.shape)}, expected [{experts}, {experts}]")
    if kind == "mask" and tensor.dtype != torch.bool:
        raise ValueError(f"{name} must be bool, got {tensor.dtype}")
    if kind == "scale":
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a float tensor, got {tensor.dtype}")
        bad = ~torch.isfinite(tensor) | (tensor < 0)
        if bool(bad.any()):
            raise ValueError(f"{name} holds {int(bad.sum())} negative or non-finite scale(s)")
    return layer


def routing_delta(mask: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor | None:
    """fp32 [E, E] change of each expert's routing factor, or None when nothing is edited."""
    if mask is None and scale is None:
        return None
    factor = scale.float() if scale is not None else torch.ones(mask.shape, dtype=torch.float32,
                                                                device=mask.device)
    if mask is not None:
        factor = factor.masked_fill(mask, 0.0)
    delta = factor - 1.0
    return delta if bool(delta.any()) else None


class Hits(NamedTuple):
    """The edited active pairs of a batch: token n, sub-experts i (g1 side) and j (g2 side), and
    the signed weight delta_ij * g1[n, h, i] * g2[n, h, j] (one entry per head)."""

    token: torch.Tensor
    i: torch.Tensor
    j: torch.Tensor
    weight: torch.Tensor


def _active(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and ids of each row's non-zero entries, padded with zeros to the widest row."""
    k = int((g > 0).sum(-1).max().item()) if g.numel() else 1
    return g.topk(max(k, 1), dim=-1)


def edited_hits(g1: torch.Tensor, g2: torch.Tensor, delta: torch.Tensor) -> Hits | None:
    """g1, g2: [N, H, E] fp32 routing of a group; delta: [E, E]. None when no edited pair is active."""
    v1, i1 = _active(g1)
    v2, i2 = _active(g2)
    E = delta.shape[1]
    d = delta.reshape(-1)[(i1.unsqueeze(-1) * E + i2.unsqueeze(-2)).reshape(-1)].view(*i1.shape, i2.shape[-1])
    weight = v1.unsqueeze(-1) * v2.unsqueeze(-2) * d
    n, h, a, b = weight.nonzero(as_tuple=True)
    if n.numel() == 0:
        return None
    return Hits(n, i1[n, h, a], i2[n, h, b], weight[n, h, a, b])
