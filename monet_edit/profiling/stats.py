"""Profile statistics: what a profile holds, and how two add.

Per routing group, over all E*E experts: n tokens and S = sum_t G(t). Labelled (toxicity)
profiles also keep the centred second moment M2 = sum_t (G - mean)^2, the co-moment
C = sum_t (G - mean)(y - mean_y), sum y and M2_y: a Pearson correlation from them never cancels.
Within a chunk of tokens G is expanded in float64 and centred exactly (two passes); chunks,
batches, shards and ranks are merged with Chan, Golub and LeVeque's pairwise update, so the
profile of A plus the profile of B is the profile of A and B together up to float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import UsageError

CHUNK_ELEMENTS = 1 << 22  # labelled profiles expand G for this many (token, expert) pairs at a time
ROUNDING = 2.0**-40  # a variance below (ROUNDING * |mean|)^2 per token is rounding noise: treated as 0


@dataclass
class Profile:
    """Routing statistics of one model on one corpus (mergeable, so profiles of shards add)."""

    n: int
    S: torch.Tensor
    M2: torch.Tensor | None = None
    C: torch.Tensor | None = None
    sum_y: float | None = None
    m2_y: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    A: torch.Tensor | None = None  # head activations: sum over tokens and heads of 1[g1 > 0] 1[g2 > 0]

    @property
    def labelled(self) -> bool:
        return self.C is not None

    @property
    def groups(self) -> int:
        return self.S.shape[0]

    @property
    def experts(self) -> int:
        return self.S.shape[1]

    def mean(self) -> torch.Tensor:
        """Mean routing weight per token, [groups, E, E] (s_e in the skew rule)."""
        return self.S / self.n

    def activation_rate(self) -> torch.Tensor:
        """Heads that activate the expert, per token, [groups, E, E] (in [0, H]; the contrastive rule)."""
        if self.A is None:
            raise UsageError(f"profile of {self.meta.get('corpus', 'this corpus')} has no activation counts "
                             f"(made by an older monet-edit); re-profile it")
        return self.A / self.n

    def pearson(self) -> torch.Tensor:
        """Pearson r between G_e(t) and y(t) per expert, [groups, E, E]; 0 where a variance is 0."""
        if not self.labelled:
            corpus = self.meta.get("corpus", "this corpus")
            raise UsageError(
                f"profile of {corpus} has no token labels; a correlation needs a labelled corpus (--toxicity)"
            )
        mean_y = self.sum_y / self.n
        var_g = torch.where(self.M2 > self.n * (ROUNDING * self.mean()) ** 2, self.M2, 0.0)
        var_y = self.m2_y if self.m2_y > self.n * (ROUNDING * mean_y) ** 2 else 0.0
        den = torch.sqrt(var_g * var_y)
        r = torch.where(den > 0, self.C / torch.where(den > 0, den, torch.ones_like(den)), 0.0)
        return r.clamp(-1.0, 1.0)

    def __add__(self, other: Profile) -> Profile:
        for key in ("model_fingerprint", "corpus_fingerprint"):
            if self.meta.get(key) != other.meta.get(key):
                raise UsageError(
                    f"cannot add profiles with different {key.replace('_', ' ')}s "
                    f"({str(self.meta.get(key))[:12]} vs {str(other.meta.get(key))[:12]})"
                )
        if self.S.shape != other.S.shape or self.labelled != other.labelled:
            raise UsageError("cannot add profiles of different shapes or with and without labels")
        merged = merge(self, other)
        return replace(merged, meta=dict(self.meta, tokens=merged.n))


def merge(a: Profile, b: Profile) -> Profile:
    """The statistics of a and b together (Chan et al.'s update: centred moments never cancel)."""
    n = a.n + b.n
    A = a.A + b.A if a.A is not None and b.A is not None else None
    if not a.labelled:
        return Profile(n, a.S + b.S, meta=a.meta, A=A)
    f = a.n * b.n / n
    d = b.S / b.n - a.S / a.n
    dy = b.sum_y / b.n - a.sum_y / a.n
    return Profile(n, a.S + b.S, a.M2 + b.M2 + d * d * f, a.C + b.C + d * (dy * f),
                   a.sum_y + b.sum_y, a.m2_y + b.m2_y + dy * dy * f, a.meta, A)


def merge_all(parts: list[Profile]) -> Profile:
    """Merge in the given order (a fixed order gives the same bytes on every run)."""
    total = parts[0]
    for part in parts[1:]:
        total = merge(total, part)
    return total



def group_stats(g1: torch.Tensor, g2: torch.Tensor, y: torch.Tensor | None) -> Profile:
    """One group's statistics over N tokens. g1, g2: [N, H, E]; y: [N] or None. Float64 throughout.

    Unlabelled: S as one GEMM over [N*H, E]. Labelled: G expanded for a chunk of tokens at a time
    (CHUNK_ELEMENTS bounds the memory), centred exactly within the chunk, chunks merged."""
    g1, g2 = g1.double(), g2.double()
    N, H, E = g1.shape
    A = (g1 > 0).double().reshape(N * H, E).T @ (g2 > 0).double().reshape(N * H, E)
    if y is None:
        S = g1.reshape(N * H, E).T @ g2.reshape(N * H, E)
        return Profile(N, S[None], A=A[None])
    y = y.double()
    step = max(1, CHUNK_ELEMENTS // (E * E))
    parts = []
    for lo in range(0, N, step):
        a, b, yy = g1[lo : lo + step], g2[lo : lo + step], y[lo : lo + step]
        G = torch.einsum("nhi,nhj->nij", a, b)  # [c, E, E]
        S = G.sum(0)
        G -= S / len(yy)
        yc = yy - yy.mean()
        M2 = torch.einsum("nij,nij->ij", G, G)
        C = torch.einsum("n,nij->ij", yc, G)
        parts.append(Profile(len(yy), S[None], M2[None], C[None], float(yy.sum()), float(yc @ yc)))
    return replace(merge_all(parts), A=A[None])


def stack_groups(per_group: list[Profile], meta: dict | None = None) -> Profile:
    """Per-group statistics of the same tokens as one [groups, E, E] profile."""
    first = per_group[0]

    def cat(name: str) -> torch.Tensor | None:
        return None if getattr(first, name) is None else torch.cat([getattr(p, name) for p in per_group])

    return Profile(first.n, cat("S"), cat("M2"), cat("C"), first.sum_y, first.m2_y, dict(meta or {}), cat("A"))


def summary(profile: Profile, top: int = 5) -> list[dict]:
    """Per group: experts ever routed to, and the `top` experts by mean weight (id = i*E + j)."""
    mean = profile.mean()
    out = []
    for g in range(profile.groups):
        flat = mean[g].reshape(-1)
        values, ids = flat.topk(min(top, flat.numel()))
        out.append(
            {
                "group": g,
                "active": int((flat > 0).sum()),
                "top": [
                    {"expert": int(i), "mean": round(float(v), 6)} for v, i in zip(values, ids, strict=True)
                ],
            }
        )
    return out
