"""The two pieces of arithmetic the atlas rests on: a token's active experts, and top-k lists.

Active experts. Per token and head, g1[h] and g2[h] have about k non-zeros each, so expert
(i, j) has G_ij = sum_h g1[h,i] g2[h,j] > 0 for at most H*k*k pairs out of E*E. `active_pairs`
joins the non-zeros of g1 and g2 on (token, head) and sums the products over heads: the cost is
the number of active pairs, never E*E per token.

Top-k lists. Every expert keeps its `k` occurrences with the largest weight; ties go to the
earlier position (positions are unique across the whole text), so (-weight, position) is a total
order and any way of merging lists (batches, shards, ranks, resumed runs) gives the same lists.
An empty slot has weight 0 and position -1; a real occurrence always has weight > 0.
"""

from __future__ import annotations

import torch

EMPTY = -1


def active_pairs(g1: torch.Tensor, g2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token [P], expert [P] = i*E + j, weight [P] float32) for every pair with G_ij > 0.

    g1, g2: [N, H, E] routing weights of N tokens. Each (token, expert) appears once, sorted by
    token then expert."""
    N, H, E = g1.shape
    device = g1.device
    n1, h1, i1 = (g1 > 0).nonzero(as_tuple=True)
    n2, h2, j2 = (g2 > 0).nonzero(as_tuple=True)
    v1, v2 = g1[n1, h1, i1].float(), g2[n2, h2, j2].float()
    key1, key2 = n1 * H + h1, n2 * H + h2  # nonzero() is row-major: key2 is sorted
    per_key2 = torch.bincount(key2, minlength=N * H)
    start2 = torch.cumsum(per_key2, 0) - per_key2
    reps = per_key2[key1]  # each g1 non-zero pairs with every g2 non-zero of its (token, head)
    a = torch.repeat_interleave(torch.arange(key1.numel(), device=device), reps)
    offset = torch.arange(a.numel(), device=device) - (torch.cumsum(reps, 0) - reps)[a]
    b = start2[key1[a]] + offset
    key = n1[a] * (E * E) + i1[a] * E + j2[b]
    unique, inverse = torch.unique(key, return_inverse=True)
    weight = torch.zeros(unique.numel(), dtype=torch.float32, device=device).index_add_(0, inverse, v1[a] * v2[b])
    keep = weight > 0  # a product may underflow to 0: such a pair is not active
    unique, weight = unique[keep], weight[keep]
    return unique // (E * E), unique % (E * E), weight


def empty_lists(rows: int, k: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` empty top-k lists: weights [rows, k] float32 zeros, positions [rows, k] int64 -1."""
    return (torch.zeros(rows, k, dtype=torch.float32, device=device),
            torch.full((rows, k), EMPTY, dtype=torch.long, device=device))


def merge_lists(wa: torch.Tensor, pa: torch.Tensor, wb: torch.Tensor, pb: torch.Tensor, k: int, *,
                later: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Row by row, the `k` best of two lists [R, ka] and [R, kb] by (-weight, position).

    `later`: every position in b comes after every position in a (a batch or shard merged into
    what came before it); then one stable sort by weight is enough."""
    w, p = torch.cat((wa, wb), 1), torch.cat((pa, pb), 1)
    if not later:
        by_position = p.argsort(dim=1, stable=True)
        w, p = w.gather(1, by_position), p.gather(1, by_position)
    by_weight = w.argsort(dim=1, descending=True, stable=True)[:, :k]
    return w.gather(1, by_weight), p.gather(1, by_weight)


def add_candidates(top_w: torch.Tensor, top_p: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor,
                   position: torch.Tensor) -> None:
    """Merge occurrences (expert, weight, position) into the lists top_w/top_p [R, k] in place.

    The occurrences come in ascending position, after every position already in the lists (the
    text is scanned in order). Only occurrences that beat their expert's k-th entry are kept (once
    the lists fill, few do); they are ranked within each expert by one sort, cut to k, and merged
    with those experts' lists."""
    k = top_w.shape[1]
    enters = weight > top_w[expert, k - 1]  # a tie with the k-th loses: its position is later
    expert, weight, position = expert[enters], weight[enters], position[enters]
    if expert.numel() == 0:
        return
    # positive float32 weights order like their bit patterns: one int64 key sorts by (expert,
    # -weight), and the stable sort keeps ascending positions among equal weights
    bits = weight.contiguous().view(torch.int32).long()
    order = (expert * (1 << 31) + ((1 << 31) - 1 - bits)).argsort(stable=True)
    expert, weight, position = expert[order], weight[order], position[order]
    touched, counts = torch.unique_consecutive(expert, return_counts=True)
    row = torch.repeat_interleave(torch.arange(touched.numel(), device=expert.device), counts)
    rank = torch.arange(expert.numel(), device=expert.device) - (torch.cumsum(counts, 0) - counts)[row]
    keep = rank < k
    cand_w, cand_p = empty_lists(touched.numel(), k, expert.device)
    cand_w[row[keep], rank[keep]] = weight[keep]
    cand_p[row[keep], rank[keep]] = position[keep]
    top_w[touched], top_p[touched] = merge_lists(top_w[touched], top_p[touched], cand_w, cand_p, k, later=True)
