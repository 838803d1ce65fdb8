"""Pure-torch reference of Monet's routing and expert mixing.

These functions define the semantics every accelerated kernel is tested against. Shapes use
N tokens, H router heads, E sub-experts per side, m (or m/2) activation width per sub-expert.

Masks and per-expert scales never expand the E*E experts: expert (i, j)
runs with weight a_ij G_ij (a = 0 masked, 1 unchanged), and only the pairs (i, j) where both
g1[h, i] and g2[h, j] are non-zero can carry weight, at most H*k1*k2 per token, so the removed
share (1 - a_ij) g1 g2 of those alone is subtracted from the mixed activations before the output
projection. A mask is the scale a = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


class MaskedPairs:
    """The active (token, head, i, j) expert pairs that masks and scales change, each with the
    share of its weight they remove: (1 - a_ij) g1[n, h, i] g2[n, h, j], a_ij the expert's scale
    (0 where masked).

    Two forms, the second made only when asked for: `changes` lists the changed pairs alone
    (token, i, j, weight: what the torch paths correct); the padded form (idx1 [N, H, K1], idx2
    [N, H, K2], weight [N, H, K1, K2], every active pair of each token and head, K the widest
    row) is what the Triton mixing kernel reads."""

    def __init__(self, changes: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 padded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 make_padded: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.changes, self._padded, self._make_padded = changes, padded, make_padded

    @classmethod
    def from_padded(cls, idx1: torch.Tensor, idx2: torch.Tensor, weight: torch.Tensor) -> MaskedPairs:
        return cls(padded=(idx1, idx2, weight))

    @property
    def padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._padded is None:
            self._padded = self._make_padded()
        return self._padded

    idx1 = property(lambda self: self.padded[0])
    idx2 = property(lambda self: self.padded[1])
    weight = property(lambda self: self.padded[2])

    def remap(self, pos1: torch.Tensor, pos2: torch.Tensor) -> MaskedPairs:
        """The same pairs with sub-expert ids i -> pos1[i], j -> pos2[j] (a restricted layer)."""
        padded = lambda: (pos1[self.idx1], pos2[self.idx2], self.weight)  # noqa: E731
        if self.changes is not None:
            n, i, j, w = self.changes
            return MaskedPairs(changes=(n, pos1[i], pos2[j], w), make_padded=padded)
        return MaskedPairs.from_padded(*padded())

    def head(self, tokens: int) -> MaskedPairs:
        """The pairs of the first `tokens` tokens."""
        padded = lambda: tuple(t[:tokens] for t in self.padded)  # noqa: E731
        if self.changes is not None:
            keep = (self.changes[0] < tokens).nonzero().squeeze(1)
            return MaskedPairs(changes=tuple(t.index_select(0, keep) for t in self.changes), make_padded=padded)
        return MaskedPairs.from_padded(*padded())


def _active(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and ids of the non-zero entries of each row (padded with zeros to the row maximum)."""
    k = int((g > 0).sum(-1).max().item()) if g.numel() else 1
    values, ids = g.topk(max(k, 1), dim=-1)
    return values, ids


def pair_cut(mask: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor | None:
    """1 - a_ij per expert, float [E, E]: 1 where `mask` is True, else 1 - `scale` (None: nothing cut)."""
    cut = None if scale is None else 1.0 - scale.float()
    if mask is not None:
        cut = mask.float() if cut is None else torch.where(mask, 1.0, cut)
    return cut


def _padded(g1: torch.Tensor, g2: torch.Tensor, cut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    v1, i1 = _active(g1)
    v2, i2 = _active(g2)
    E = cut.shape[1]
    flat = (i1.unsqueeze(-1) * E + i2.unsqueeze(-2)).reshape(-1)
    share = cut.reshape(-1).index_select(0, flat).view(*i1.shape, i2.shape[-1])
    return i1, i2, share.mul_(v1.unsqueeze(-1) * v2.unsqueeze(-2))


def _changes(g1: torch.Tensor, g2: torch.Tensor, cut: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token, i, j, weight) of every active pair with a non-zero cut. Enumerated per token and
    head from the non-zero routing weights (about k1*k2 candidates each) instead of padding every
    row to the widest one (at the mid bench shape: 5x fewer candidates, 4 ms instead of 6 ms)."""
    N, H, E1 = g1.shape
    E2 = g2.shape[-1]
    dev = g1.device
    row1, i = (g1 > 0).view(N * H, E1).nonzero(as_tuple=True)  # row = n*H + h, ascending
    row2, j = (g2 > 0).view(N * H, E2).nonzero(as_tuple=True)
    count2 = torch.bincount(row2, minlength=N * H)
    start2 = count2.cumsum(0) - count2
    repeat = count2.index_select(0, row1)                    # candidates of each side-1 entry
    a = torch.repeat_interleave(torch.arange(row1.numel(), device=dev), repeat)
    offset = torch.arange(a.numel(), device=dev) - torch.repeat_interleave(repeat.cumsum(0) - repeat, repeat)
    b = start2.index_select(0, row1.index_select(0, a)) + offset
    ii, jj = i.index_select(0, a), j.index_select(0, b)
    share = cut.reshape(-1).index_select(0, ii * E2 + jj)
    keep = share.nonzero().squeeze(1)
    rows = row1.index_select(0, a.index_select(0, keep))
    ii, jj = ii.index_select(0, keep), jj.index_select(0, keep)
    w = (share.index_select(0, keep) * g1.reshape(-1).index_select(0, rows * E1 + ii)
         * g2.reshape(-1).index_select(0, rows * E2 + jj))
    return rows.div(H, rounding_mode="floor"), ii, jj, w


def masked_pairs(g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> MaskedPairs | None:
    """Active (token, head, i, j) pairs that a mask (bool [E, E], True = masked) or a scale (float
    [E, E], 1 = unchanged) changes; None when no active pair is changed."""
    cut = pair_cut(mask, scale)
    if cut is None:
        return None
    cut = cut.to(g1.device)
    changes = _changes(g1, g2, cut)
    if changes[0].numel() == 0:
        return None
    return MaskedPairs(changes=changes, make_padded=lambda: _padded(g1, g2, cut))


def hits(pairs: MaskedPairs, experts1: int, experts2: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The changed active pairs as flat row ids n*E1 + i and n*E2 + j, with their weights.

    Only the pairs that a mask or scale changes carry a non-zero weight, a few percent of the
    active ones, so the correction touches those rows alone instead of every active (token, head, i, j).
    """
    if pairs.changes is not None:
        n, i, j, w = pairs.changes
        return n * experts1 + i, n * experts2 + j, w
    idx1, idx2, weight = pairs.padded
    N, H, K1, K2 = weight.shape
    flat = weight.reshape(-1)
    hit = flat.nonzero().squeeze(1)  # flat position ((n*H + h)*K1 + a)*K2 + b, then 1-d gathers only
    row, b = hit // K2, hit % K2
    nh, a = row // K1, row % K1
    n = nh // H
    i = idx1.reshape(-1).index_select(0, nh * K1 + a)
    j = idx2.reshape(-1).index_select(0, nh * K2 + b)
    return n * experts1 + i, n * experts2 + j, flat.index_select(0, hit)


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
    the layer output is V . flatten(slots) + bias @ b, with slot j = sum_i a_ij G_ij a_i and
    bias[j] = sum_i a_ij G_ij (a_ij = 1 unless `pairs` changes expert (i, j)).
    """
    g1 = g1.to(a.dtype)
    g2 = g2.to(a.dtype)
    z = torch.bmm(g1, a)                              # [N, H, m]: sum_i g1[h, i] a_i
    slots = torch.bmm(g2.transpose(1, 2), z)          # [N, E, m]: sum_h g2[h, j] z_h
    bias = g2.sum(1)                                  # [N, E]
    if pairs is not None:
        rows1, rows2, w = hits(pairs, g1.shape[-1], g2.shape[-1])
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
        rows1, rows2, w = hits(pairs, g1.shape[-1], g2.shape[-1])
        w = w.to(a1.dtype)
        _subtract_rows(r1, rows1, w)
        _subtract_rows(r2, rows2, w)
        _subtract_rows(top_cross, rows1, w, a2, rows2)
        _subtract_rows(bottom_cross, rows2, w, a1, rows1)
    return VDMix(r1.unsqueeze(-1) * a1, top_cross, bottom_cross, r2.unsqueeze(-1) * a2, r1, r2)
