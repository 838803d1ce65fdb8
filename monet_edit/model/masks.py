"""Expert mask files: one bool [E, E] tensor per routing group (True = masked) plus metadata.

File format: safetensors with tensors `group.G` (every group of the model, empty ones included)
and a `monet_edit` metadata entry holding JSON (model fingerprint, rule, parameters, counts,
provenance). Group G covers layers G*moe_groups .. (G+1)*moe_groups-1; mask[i, j] is expert
(i, j) with i from the g1 side and j from the g2 side.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..infra.provenance import RECORD_KEY
from .config import MonetConfig

KEY = re.compile(r"^group\.(\d+)$")


def normalise(masks: Any, config: MonetConfig, where: str = "mask") -> dict:
    """Validate a {group: bool tensor [E, E]} dict against the model; return bool CPU tensors."""
    import torch

    if not isinstance(masks, dict):
        raise UsageError(f"{where}: expected a mask file or a dict {{group: bool tensor [E, E]}}")
    E, groups = config.moe_experts, config.num_groups
    out = {}
    for group, mask in masks.items():
        if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < groups:
            raise UsageError(f"{where}: group {group!r} is out of range (model has {groups} routing groups)")
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != (E, E):
            raise UsageError(f"{where}: group {group} mask has shape {list(mask.shape)}, "
                             f"the model needs [{E}, {E}]")
        out[group] = mask.to("cpu", torch.bool)
    return out


def save(path: str | Path, masks: dict, config: MonetConfig, meta: dict[str, Any]) -> Path:
    """Write a mask file atomically, every group present (empty groups as all-False)."""
    import torch
    from safetensors.torch import save

    from ..infra import atomic

    masks = normalise(masks, config)
    E = config.moe_experts
    tensors = {f"group.{g}": masks.get(g, torch.zeros(E, E, dtype=torch.bool)).contiguous()
               for g in range(config.num_groups)}
    meta = dict(meta, experts_per_side=E, groups=config.num_groups, counts=counts(masks, config))
    data = save(tensors, metadata={RECORD_KEY: json.dumps(meta, sort_keys=True)})
    return atomic.write_bytes(path, data)


def load(path: str | Path, config: MonetConfig | None = None) -> tuple[dict, dict[str, Any]]:
    """Read a mask file; with `config`, check it fits the model. Returns (masks, metadata)."""
    from .checkpoint import read_tagged

    tensors, meta = read_tagged(path, RECORD_KEY, "mask file")
    if meta is not None and not isinstance(meta, dict):
        raise UsageError(f"{path}: mask file metadata is not a JSON object")
    masks = {}
    for name, tensor in tensors.items():
        m = KEY.match(name)
        if m is None:
            raise UsageError(f"{path}: unexpected tensor {name!r} in a mask file")
        masks[int(m.group(1))] = tensor
    if not masks:
        raise UsageError(f"{path}: mask file holds no groups")
    if config is not None:
        masks = normalise(masks, config, where=str(path))
    return masks, meta or {}


def combine(*masks: dict) -> dict:
    """The union (logical or) of several {group: bool [E, E]} dicts: an expert masked by any is masked."""
    out: dict = {}
    for part in masks:
        for g, m in part.items():
            out[g] = out[g] | m.to(out[g].device) if g in out else m
    return out


def counts(masks: dict, config: MonetConfig) -> list[int]:
    """Masked experts per group, for every group of the model."""
    return [int(masks[g].sum()) if g in masks else 0 for g in range(config.num_groups)]
