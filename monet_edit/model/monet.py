"""The Monet language model in plain PyTorch (Park et al., ICLR 2025).

A Llama pre-norm decoder whose MLPs are Monet expert layers. Module and parameter names follow
the released Hugging Face checkpoints exactly, so `state_dict()` keys are the safetensors names.
Routing groups: layer L has a router when L % moe_groups == 0; the next moe_groups-1 layers
reuse its (g1, g2). Expert masks and scales are per group, held by that group's router, and so is
the choice of expert path (dense, or routed over the active pairs only; kernels.dispatch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from .config import MonetConfig

KVCache = list[tuple[torch.Tensor, torch.Tensor]]
Routing = tuple[torch.Tensor, torch.Tensor]


@dataclass
class MonetOutput:
    """Forward result: logits [B, T, V], the updated KV cache, and per-group routing if asked."""

    logits: torch.Tensor
    past_key_values: KVCache | None = None
    routing: list[Routing] | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class MonetAttention(nn.Module):
    def __init__(self, config: MonetConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        present = (k, v)
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        S = k.shape[2]
        if T == 1:
            out = F.scaled_dot_product_attention(q, k, v)
        elif S == T:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a chunk after a cache: query t sees keys up to S - T + t
            allowed = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1)), present


class MonetRouter(nn.Module):
    """Two routers (one per sub-expert side) with BatchNorm-threshold top-k and masked softmax."""

    def __init__(self, config: MonetConfig) -> None:
        super().__init__()
        self.heads, self.experts = config.moe_heads, config.moe_experts
        self.w1 = nn.Linear(config.hidden_size, self.heads * self.experts, bias=False)
        self.w2 = nn.Linear(config.hidden_size, self.heads * self.experts, bias=False)
        self.norm1 = nn.BatchNorm1d(self.heads, affine=False)
        self.norm2 = nn.BatchNorm1d(self.heads, affine=False)
        self.sigma = kernels.routing_threshold(config.moe_topk, config.moe_experts)
        # Expert mask of this routing group ([E, E] bool, True = masked) and per-expert scale ([E, E]
        # float, 1 = unchanged); neither is part of state_dict.
        self.register_buffer("expert_mask", None, persistent=False)
        self.register_buffer("expert_scale", None, persistent=False)

    def _side(self, w: nn.Linear, norm: nn.BatchNorm1d, u: torch.Tensor) -> torch.Tensor:
        z = w(u).view(-1, self.heads, self.experts).float()
        normed = None
        if self.training:  # batch statistics over tokens and experts per head; updates running stats
            normed = norm(z.transpose(1, 2).reshape(-1, self.heads)).view(-1, self.experts, self.heads)
            normed = normed.transpose(1, 2)
        return kernels.route(z, norm.running_mean, norm.running_var, self.sigma, normed=normed)

    def forward(self, u: torch.Tensor) -> Routing:
        """u: [N, d] -> (g1, g2), each [N, H, E] in fp32."""
        return self._side(self.w1, self.norm1, u), self._side(self.w2, self.norm2, u)


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


class MonetHDExperts(nn.Module):
    """Horizontal decomposition: E_ij(x) = V_j relu2(U_i x + c_i) + b_j."""

    def __init__(self, config: MonetConfig) -> None:
        super().__init__()
        E, m, d = config.moe_experts, config.moe_dim, config.hidden_size
        self.experts = E
        self.u = nn.Linear(d, E * m)
        self.v = nn.Linear(E * m, d, bias=False)
        self.b = nn.Parameter(torch.zeros(E, d))

    def forward(self, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor,
                pairs: kernels.MaskedPairs | None, plan: kernels.Plan | None = None) -> torch.Tensor:
        if 0 < x.shape[0] <= kernels.sparse_tokens():
            return kernels.hd_sparse(self, x, g1, g2, pairs)
        if plan is not None:
            return kernels.hd_routed(self, x, plan)
        a = relu2(self.u(x)).view(x.shape[0], self.experts, -1)
        slots, bias = kernels.hd_mix(a, g1, g2, pairs)
        return self.v(slots.flatten(1)) + bias @ self.b.to(slots.dtype)


class MonetVDExperts(nn.Module):
    """Vertical decomposition: [V11_i a1_i + V12_i a2_j + b1_i ; V21_j a1_i + V22_j a2_j + b2_j]."""

    def __init__(self, config: MonetConfig) -> None:
        super().__init__()
        E, half, d2 = config.moe_experts, config.moe_experts * config.moe_dim // 2, config.hidden_size // 2
        self.experts = E
        self.u1 = nn.Linear(config.hidden_size, half)
        self.u2 = nn.Linear(config.hidden_size, half)
        self.v11 = nn.Linear(half, d2, bias=False)
        self.v12 = nn.Linear(half, d2, bias=False)
        self.v21 = nn.Linear(half, d2, bias=False)
        self.v22 = nn.Linear(half, d2, bias=False)
        self.b1 = nn.Parameter(torch.zeros(E, d2))
        self.b2 = nn.Parameter(torch.zeros(E, d2))

    def forward(self, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor,
                pairs: kernels.MaskedPairs | None, plan: kernels.Plan | None = None) -> torch.Tensor:
        N = x.shape[0]
        if 0 < N <= kernels.sparse_tokens():
            return kernels.vd_sparse(self, x, g1, g2, pairs)
        if plan is not None:
            return kernels.vd_routed(self, x, plan)
        a1 = relu2(self.u1(x)).view(N, self.experts, -1)
        a2 = relu2(self.u2(x)).view(N, self.experts, -1)
        mix = kernels.vd_mix(a1, a2, g1, g2, pairs)
        top = (self.v11(mix.top_self.flatten(1)) + self.v12(mix.top_cross.flatten(1))
               + mix.bias1 @ self.b1.to(a1.dtype))
        bottom = (self.v21(mix.bottom_cross.flatten(1)) + self.v22(mix.bottom_self.flatten(1))
                  + mix.bias2 @ self.b2.to(a1.dtype))
        return torch.cat((top, bottom), dim=-1)


class MonetDecoderLayer(nn.Module):
    def __init__(self, config: MonetConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = MonetAttention(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        experts = MonetHDExperts if config.moe_decompose == "horizontal" else MonetVDExperts
        self.moe = experts(config)
        self.router = MonetRouter(config) if layer_idx % config.moe_groups == 0 else None


class MonetModel(nn.Module):
    def __init__(self, config: MonetConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MonetDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)

    def routers(self) -> list[MonetRouter]:
        """One router per routing group, in group order."""
        return [layer.router for layer in self.layers if layer.router is not None]

    def forward(self, input_ids: torch.Tensor, past_key_values: KVCache | None = None,
                use_cache: bool = False, routing: list[Routing] | None = None, routing_only: bool = False
                ) -> tuple[torch.Tensor | None, KVCache | None]:
        """Returns final hidden states [B, T, d]; appends each group's (g1, g2) to `routing`.

        routing_only: stop once the last router has routed (its layer's experts and every later
        layer do not change any routing) and return (None, None); what profiling needs."""
        B, T = input_ids.shape
        start = past_key_values[0][0].shape[2] if past_key_values else 0
        h = self.embed_tokens(input_ids)
        cos, sin = self.rotary(torch.arange(start, start + T, device=h.device), h.dtype)
        cache: KVCache = []
        g1 = g2 = pairs = plan = None
        last_router = max(i for i, layer in enumerate(self.layers) if layer.router is not None)
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values else None
            attn, present = layer.self_attn(layer.input_layernorm(h), cos, sin, past)
            if use_cache:
                cache.append(present)
            h = h + attn
            u = layer.post_attention_layernorm(h).reshape(B * T, -1)
            if layer.router is not None:
                g1, g2 = layer.router(u)
                if routing is not None:
                    routing.append((g1.view(B, T, *g1.shape[1:]), g2.view(B, T, *g2.shape[1:])))
                if routing_only and i == last_router:
                    return None, None
                pairs, plan = self._expert_inputs(layer.router, g1, g2, u)
            h = h + layer.moe(u, g1, g2, pairs, plan).view(B, T, -1)
        return self.norm(h), (cache if use_cache else None)

    def _expert_inputs(self, router: MonetRouter, g1: torch.Tensor, g2: torch.Tensor, u: torch.Tensor
                       ) -> tuple[kernels.MaskedPairs | None, kernels.Plan | None]:
        """A group's changed pairs (masks, scales) and, when the routed path is chosen, its plan."""
        pairs = None
        if router.expert_mask is not None or router.expert_scale is not None:
            pairs = kernels.masked_pairs(g1, g2, router.expert_mask, router.expert_scale)
        plan = None
        if u.shape[0] > kernels.sparse_tokens():
            cfg = self.config
            plan = kernels.expert_plan(g1, g2, pairs, cfg.moe_dim, cfg.hidden_size, grad=u.requires_grad,
                                       decompose=cfg.moe_decompose, dtype=u.dtype)
        return pairs, plan


class MonetForCausalLM(nn.Module):
    def __init__(self, config: MonetConfig) -> None:
        super().__init__()
        self.config = config
        self.model = MonetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, past_key_values: KVCache | None = None,
                use_cache: bool = False, output_routing: bool = False) -> MonetOutput:
        routing: list[Routing] | None = [] if output_routing else None
        h, cache = self.model(input_ids, past_key_values, use_cache, routing)
        return MonetOutput(self.lm_head(h), cache, routing)

    # ---- masks ---------------------------------------------------------------------------
    def expert_major_(self) -> MonetForCausalLM:
        """Store every expert output projection expert-major: the [d, E*m] weight becomes a transposed
        view of a contiguous [E*m, d] tensor (same values, same memory). The routed path then reads
        each sub-expert's rows in place instead of copying the whole weight per call
        (kernels.routed.expert_major), and the dense path's GEMM reads it transposed at no cost."""
        for layer in self.model.layers:
            for name in ("v",) if isinstance(layer.moe, MonetHDExperts) else ("v11", "v12", "v21", "v22"):
                weight = getattr(layer.moe, name).weight
                if weight.device.type != "meta" and not weight.t().is_contiguous():
                    weight.data = weight.data.t().contiguous().t()
        return self

    def set_masks(self, masks: dict[int, torch.Tensor] | None) -> None:
        """Install per-group expert masks ({group: bool [E, E]}, True = masked); None clears all."""
        routers = self.model.routers()
        masks = masks or {}
        for group, router in enumerate(routers):
            mask = masks.get(group)
            router.expert_mask = (mask.to(device=router.w1.weight.device, dtype=torch.bool)
                                  if mask is not None and bool(mask.any()) else None)

    def masks(self) -> dict[int, torch.Tensor]:
        """The installed masks, {group: bool [E, E]} (groups without a mask are left out)."""
        return {g: r.expert_mask for g, r in enumerate(self.model.routers()) if r.expert_mask is not None}

    def set_scales(self, scales: dict[int, torch.Tensor] | None) -> None:
        """Install per-group expert scales ({group: float [E, E]}): expert (i, j) then routes with
        a_ij G_ij (1 unchanged, 0 as masked, (0, 1) attenuated, > 1 amplified), computed like masks
        over the changed active pairs only; a masked expert stays masked. None clears all."""
        E = self.config.moe_experts
        routers = self.model.routers()
        scales = scales or {}
        for group, router in enumerate(routers):
            scale = scales.get(group)
            if scale is not None and (tuple(scale.shape) != (E, E) or not bool(torch.isfinite(scale).all())):
                raise ValueError(f"scale of group {group}: expected finite values of shape ({E}, {E}), "
                                 f"got {tuple(scale.shape)}")
            router.expert_scale = (scale.to(device=router.w1.weight.device, dtype=torch.float32)
                                   if scale is not None and bool((scale != 1).any()) else None)

    def scales(self) -> dict[int, torch.Tensor]:
        """The installed scales, {group: float [E, E]} (groups left unchanged are left out)."""
        return {g: r.expert_scale for g, r in enumerate(self.model.routers()) if r.expert_scale is not None}

    # ---- initialisation ------------------------------------------------------------------
    def init_weights(self, seed: int = 0) -> MonetForCausalLM:
        """Random initialisation (normal(0, initializer_range) weights, zero biases), reproducible."""
        gen = torch.Generator().manual_seed(seed)
        std = self.config.initializer_range
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    p.fill_(1.0)
                elif p.dim() == 1 or name.endswith((".b", ".b1", ".b2")):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
