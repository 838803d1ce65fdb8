"""`monet-edit info`: what a checkpoint is, read from its config and safetensors headers only."""

from __future__ import annotations

from math import prod
from pathlib import Path
from typing import Any

from . import checkpoint


def describe(source: str | Path | checkpoint.Checkpoint) -> dict[str, Any]:
    """Architecture, sizes, parameter count, dtype, masks and fingerprint of a checkpoint.

    Reads no tensor except the (small) masks, so it is instant even for multi-GB checkpoints.
    """
    ckpt = checkpoint.of(source)
    cfg, infos = ckpt.config, ckpt.infos
    checkpoint.check_tensors(cfg, infos, ckpt.dir)
    params = sum(prod(i.shape) for n, i in infos.items()
                 if not checkpoint.MASK_KEY.match(n) and ".router.norm" not in n)
    dtypes = sorted({i.dtype for n, i in infos.items() if i.dtype not in ("BOOL", "I64")})
    masked = [0] * cfg.num_groups
    for group, mask in ckpt.stored_masks.items():
        masked[group] = int(mask.sum())
    return {
        "path": str(ckpt.dir),
        "model_type": "monet",
        "decomposition": cfg.moe_decompose,
        "hidden_size": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "attention_heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "vocab_size": cfg.vocab_size,
        "experts_per_side": cfg.moe_experts,
        "experts_per_layer": cfg.num_experts,
        "expert_dim": cfg.moe_dim,
        "router_heads": cfg.moe_heads,
        "topk": cfg.moe_topk,
        "group_size": cfg.moe_groups,
        "routing_groups": cfg.num_groups,
        "experts_per_group": cfg.num_experts,
        "parameters": params,
        "dtype": dtypes[0].lower() if len(dtypes) == 1 else dtypes,
        "masked_experts_per_group": masked,
        "masked_fraction": sum(masked) / (cfg.num_experts * cfg.num_groups),
        "weights_sha256": ckpt.fingerprint,
        "edit": ckpt.edit_record,
    }
