"""Profile files: safetensors with float64 [groups, E, E] tensors `S` (and `M2`, `C` when
labelled), `A` (head activation counts; the contrastive rule) and a `monet_edit` metadata entry holding JSON {format, n, sum_y, m2_y, meta}.

Format 1 stored raw power sums (S2, SY) whose one-pass correlation cancelled; such files are
refused with a line saying to re-profile (StaleProfile), and the cache recomputes them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import UsageError
from ..infra import atomic
from ..infra.provenance import RECORD_KEY as META_KEY
from .stats import Profile

FORMAT = 2
OLD_FORMATS = (1,)


class StaleProfile(UsageError):
    """A profile file of an older format: readable, but its statistics must be recomputed."""


def save(profile: Profile, path: str | Path) -> Path:
    """Write a profile atomically; the same profile always gives the same bytes."""
    return atomic.write_bytes(path, serialise(profile))


def serialise(profile: Profile) -> bytes:
    """A profile file's bytes (deterministic: sorted metadata, float64 tensors)."""
    from safetensors.torch import save as st_save

    tensors = {"S": profile.S}
    if profile.A is not None:
        tensors["A"] = profile.A
    if profile.labelled:
        tensors.update(M2=profile.M2, C=profile.C)
    tensors = {k: v.to(torch.float64).contiguous() for k, v in tensors.items()}
    head = {
        "format": FORMAT,
        "n": profile.n,
        "sum_y": profile.sum_y,
        "m2_y": profile.m2_y,
        "meta": profile.meta,
    }
    return st_save(tensors, metadata={META_KEY: json.dumps(head, sort_keys=True)})


def load(path: str | Path, *, model_fingerprint: str | None = None, config=None) -> Profile:
    """Read and validate a profile; with `model_fingerprint` (and `config`), check it fits the model."""
    from ..model.checkpoint import read_tagged

    path = Path(path)
    tensors, head = read_tagged(path, META_KEY, "monet-edit profile")
    if not isinstance(head, dict) or not isinstance(head.get("meta"), dict):
        raise UsageError(f"{path}: not a monet-edit profile (no profile metadata)")
    if head.get("format") in OLD_FORMATS:
        raise StaleProfile(f"{path}: profile format {head['format']} was written by an older monet-edit "
                           f"(unstable statistics); re-profile it with `monet-edit profile`")
    if head.get("format") != FORMAT:
        raise UsageError(
            f"{path}: profile format {head.get('format')!r} is not supported (expected {FORMAT})"
        )
    S = tensors.get("S")
    labelled = "C" in tensors
    if S is None or S.dim() != 3 or S.shape[1] != S.shape[2] or set(tensors) - {"S", "A", "M2", "C"}:
        raise UsageError(f"{path}: profile tensors must be S, A (and M2, C) of shape [groups, E, E]")
    if labelled != ("M2" in tensors) or any(t.shape != S.shape for t in tensors.values()):
        raise UsageError(f"{path}: profile tensors S, M2, C must all be present with the same shape")
    n = head.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise UsageError(f"{path}: profile is empty (token count {n!r})")
    sums = [head.get("sum_y"), head.get("m2_y")]
    if labelled and not all(isinstance(s, (int, float)) and math.isfinite(s) for s in sums):
        raise UsageError(f"{path}: labelled profile lacks finite sum_y and m2_y")
    if labelled and (sums[1] < 0 or bool((tensors["M2"] < 0).any())):
        raise UsageError(f"{path}: profile holds a negative centred second moment")
    if any(not bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise UsageError(f"{path}: profile holds NaN or infinite values")
    meta = head["meta"]
    if model_fingerprint is not None and meta.get("model_fingerprint") != model_fingerprint:
        raise UsageError(
            f"{path}: profile was made for another model (fingerprint "
            f"{str(meta.get('model_fingerprint'))[:12]}, this model is {model_fingerprint[:12]})"
        )
    if config is not None and tuple(S.shape) != (config.num_groups, config.moe_experts, config.moe_experts):
        raise UsageError(
            f"{path}: profile has shape {list(S.shape)}, the model needs "
            f"[{config.num_groups}, {config.moe_experts}, {config.moe_experts}]"
        )
    if labelled:
        return Profile(n, S, tensors["M2"], tensors["C"], float(sums[0]), float(sums[1]), meta, tensors.get("A"))
    return Profile(n, S, meta=meta, A=tensors.get("A"))
