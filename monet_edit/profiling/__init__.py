"""Routing profiles: how much a model routes a corpus's tokens through each expert.

Per routing group, over all E*E experts: n tokens and S = sum_t G(t) (a float64 GEMM over tokens
and heads, never the per-token E*E expansion). Labelled corpora also keep, per expert, the centred
second moment M2 = sum_t (G(t) - mean)^2 and the co-moment C = sum_t (G(t) - mean)(y(t) - mean_y),
and for the label its sum and centred M2_y: enough for a Pearson correlation that does not cancel.
These are computed exactly (two passes) over chunks of tokens and merged with Chan, Golub and
LeVeque's pairwise update, so profiles still add: the profile of A plus the profile of B is the
profile of A and B together, whatever the shard, batch or rank split, up to float64 rounding.

File format 2: safetensors with float64 [groups, E, E] tensors `S` (and `M2`, `C` when labelled)
and a `monet_edit` metadata entry holding JSON {format, n, sum_y, m2_y, meta}. Format 1 stored raw
power sums (S2, SY) whose one-pass correlation cancelled; such files are refused (re-profile).
"""

from .accumulate import (
           PRIME_DOCS,
           SHARD_TOKENS,
           labelled_stream,
           profile_corpus,
           profile_rows,
           profile_sharded,
)
from .cache import default_dir, ensure_profiles, profile_path
from .files import FORMAT, META_KEY, StaleProfile, load, save, serialise
from .stats import Profile, group_stats, merge, merge_all, summary

__all__ = ["FORMAT", "META_KEY", "PRIME_DOCS", "SHARD_TOKENS", "Profile", "StaleProfile", "default_dir",
           "ensure_profiles", "group_stats", "labelled_stream", "load", "merge", "merge_all", "profile_corpus",
           "profile_path", "profile_rows", "profile_sharded", "save", "serialise", "summary"]
