"""Monet as a vLLM model: Llama pre-norm attention (GQA, RoPE) with Monet expert layers.

Tensor names are the checkpoint's (monet-edit's and the published MonetLLM ones): q/k/v are
loaded into one QKV column-parallel matmul, VD's u1/u2 into one merged matmul, and a group's
`expert_mask` / `expert_scale` into its router (edits.py). Routing groups: layer L has a router
when L % moe_groups == 0 and the next moe_groups - 1 layers reuse its (g1, g2) and its edited
pairs, as in monet_edit.model.monet. Pipeline parallelism is not offered (a stage boundary inside
a routing group would have to ship the routing); tensor parallelism is (experts.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.utils import maybe_prefix
from vllm.sequence import IntermediateTensors

from ..model.config import MonetConfig
from . import edits
from .experts import MonetHDExperts, MonetRouter, MonetVDExperts
from .hf_config import monet_config

# (name in the checkpoint, name of the fused parameter, shard id)
STACKED = ((".q_proj.", ".qkv_proj.", "q"), (".k_proj.", ".qkv_proj.", "k"), (".v_proj.", ".qkv_proj.", "v"),
           (".moe.u1.", ".moe.u12.", 0), (".moe.u2.", ".moe.u12.", 1))
IGNORED = ("rotary_emb.inv_freq", "num_batches_tracked")


class MonetAttention(nn.Module):
    def __init__(self, config: MonetConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        if heads % tp or (kv % tp and tp % kv):
            raise ValueError(f"{heads} attention heads / {kv} key-value heads cannot be split over "
                             f"tensor parallel size {tp}")
        self.head_dim = config.head_dim
        self.q_size = heads // tp * self.head_dim
        self.kv_size = max(1, kv // tp) * self.head_dim
        bias = config.attention_bias
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, heads, kv, bias=bias,
                                          prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(heads * self.head_dim, config.hidden_size, bias=bias,
                                        prefix=f"{prefix}.o_proj")
        self.rotary_emb = get_rope(self.head_dim, max_position=config.max_position_embeddings,
                                   rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
                                   is_neox_style=True)
        self.attn = Attention(heads // tp, self.head_dim, self.head_dim ** -0.5, num_kv_heads=max(1, kv // tp),
                              cache_config=vllm_config.cache_config, prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(x)[0].split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v))[0]


class MonetDecoderLayer(nn.Module):
    def __init__(self, config: MonetConfig, vllm_config: VllmConfig, index: int, prefix: str) -> None:
        super().__init__()
        self.self_attn = MonetAttention(config, vllm_config, f"{prefix}.self_attn")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        experts = MonetHDExperts if config.moe_decompose == "horizontal" else MonetVDExperts
        self.moe = experts(config, f"{prefix}.moe")
        self.router = MonetRouter(config, f"{prefix}.router") if index % config.moe_groups == 0 else None


class MonetModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.config = config = monet_config(vllm_config.model_config.hf_config)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MonetDecoderLayer(config, vllm_config, i, f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
        residual = None
        g1 = g2 = hits = None
        for layer in self.layers:
            if residual is None:
                residual, x = h, layer.input_layernorm(h)
            else:
                x, residual = layer.input_layernorm(h, residual)
            x, residual = layer.post_attention_layernorm(layer.self_attn(positions, x), residual)
            if layer.router is not None:
                g1, g2 = layer.router(x)
                delta = layer.router.delta
                hits = edits.edited_hits(g1, g2, delta) if delta is not None else None
            h = layer.moe(x, g1, g2, hits)
        return self.norm(h, residual)[0]


class MonetForCausalLM(nn.Module):
    # The weights only: a resected checkpoint also holds its mask file (edit-mask.safetensors),
    # which vLLM's default "*.safetensors" would load as weights. The first pattern that matches wins.
    allow_patterns_overrides = ["model.safetensors", "model-*-of-*.safetensors", "*.safetensors"]

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.model = MonetModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.config = config = self.model.config
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix=maybe_prefix(prefix, "lm_head"))
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Every checkpoint tensor goes to its (sharded) parameter; edits go to their router."""
        config = self.config
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if any(part in name for part in IGNORED):
                continue
            if config.tie_word_embeddings and name == "lm_head.weight":
                continue
            if edits.EDIT_KEY.match(name):
                layer = edits.check_edit(name, tensor, config.num_hidden_layers, config.moe_groups,
                                         config.moe_experts)
                router = self.model.layers[layer].router
                device = router.norm1.running_mean.device
                if name.endswith("mask"):
                    router.expert_mask = tensor.to(device)
                else:
                    router.expert_scale = tensor.to(device, torch.float32)
                continue
            target, shard = name, None
            for old, new, shard_id in STACKED:
                if old in name:
                    target, shard = name.replace(old, new), shard_id
                    break
            param = params.get(target)
            if param is None:
                raise ValueError(f"unexpected tensor {name} for this Monet config")
            loader = getattr(param, "weight_loader", default_weight_loader)
            if shard is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard)
            loaded.add(target)
        for layer in self.model.layers:
            if layer.router is not None:
                layer.router.delta = edits.routing_delta(layer.router.expert_mask, layer.router.expert_scale)
        if config.tie_word_embeddings:
            loaded.add("lm_head.weight")
        return loaded
