"""Run the published modeling file itself (`--upstream PATH`) on the weights of one of our models.

The published `modeling_monet.py` (github.com/dmis-lab/Monet) imports transformers 4.46-era
internals (LLAMA_ATTENTION_CLASSES) and scipy, so it needs a Python where those import, e.g.
`pip install --target DIR transformers==4.46.3 tokenizers==0.20.3 huggingface_hub==0.26.5` and
PYTHONPATH=DIR. It is loaded from the given path (never downloaded), configured with eager
attention and no cache, and given our state dict: the tensor names are the same.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from monet_edit.errors import UsageError
from monet_edit.model.monet import MonetForCausalLM

MODULE = "monet_upstream_modeling"


def load_module(path: str | Path):
    """Import the published file (one line naming the problem when it cannot be imported)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--upstream {path}: no such file")
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module  # dataclasses resolve the module by name while it executes
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the file's own imports: an incompatible transformers, no scipy
        sys.modules.pop(MODULE, None)
        raise UsageError(f"--upstream {path}: cannot import it here ({type(exc).__name__}: {exc}); "
                         "it needs transformers 4.46 and scipy on the path") from None
    for name in ("MonetConfig", "MonetForCausalLM"):
        if not hasattr(module, name):
            raise UsageError(f"--upstream {path}: defines no {name}; is it Monet's modeling_monet.py?")
    return module


def forward_fn(module, model: MonetForCausalLM) -> Callable[..., torch.Tensor]:
    """A function ids -> fp32 logits running the published model on `model`'s weights; with
    `routing=list`, it appends each group's (g1, g2) like bench.baseline.forward."""
    cfg = model.config
    config = module.MonetConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings, moe_dim=cfg.moe_dim,
        moe_heads=cfg.moe_heads, moe_experts=cfg.moe_experts, moe_topk=cfg.moe_topk, moe_groups=cfg.moe_groups,
        moe_decompose=cfg.moe_decompose, use_cache=False, attn_implementation="eager")
    published = module.MonetForCausalLM(config).eval()
    published.load_state_dict(model.state_dict(), strict=True)
    published.to(next(model.parameters()).dtype)
    for layer in published.model.layers:  # BatchNorm statistics stay fp32, as in load_model
        if getattr(layer, "router", None) is not None:
            layer.router.norm1.float()
            layer.router.norm2.float()

    @torch.no_grad()
    def run(ids: torch.Tensor, routing: list | None = None) -> torch.Tensor:
        out = published(input_ids=ids, use_cache=False, output_router_probs=routing is not None)
        if routing is not None:
            routing.extend(p for p in out.router_probs if p is not None)
        return out.logits

    return run
