"""The faithful baseline: the published Monet forward (dmis-lab/Monet modeling_monet.py, run with
transformers 4.46's eager Llama attention), rewritten op for op on the weights of one of our models.

What it reproduces, in the same order and with the same einsums:
- attention: Llama eager attention, with the rotary cos/sin computed inside every layer (the
  published model builds no rotary module, so 4.46 falls back to the per-layer one), a causal mask
  [B, 1, T, T+1] of dtype-min built per forward, scores by matmul, softmax in fp32, matmul;
- router: both sides' scores as [b, t, H, E] in fp32, BatchNorm1d (eval) over [b*t*E, H], the
  threshold with amax/clamp_max_ at sigma = ndtri(1 - k/E) (the published code recomputes sigma
  with scipy on every call, microseconds), softmax of torch.where(kept, z, -1e10);
- experts, dense: HD `v(einsum("btim,bthi,bthj->btjm", relu2(u(x)), g1, g2)) + einsum("bthj,jd->btd",
  g2, b)`, VD the six einsums x11..x23 of MonetMoVDE;
- final RMSNorm in fp32, lm_head, logits cast to fp32.
The published code has no masking; `masked=True` zeroes masked experts the way the paper's code
does, by expanding G [b, t, E, E]. bench/fidelity.py measures this file against the published
module itself (`python -m bench fidelity --upstream PATH`). Not used by the tool.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from monet_edit.model.monet import MonetForCausalLM


def _rms(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    return norm.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _rotary(inv_freq: torch.Tensor, x: torch.Tensor, position_ids: torch.Tensor):
    """LlamaRotaryEmbedding.forward: cos, sin [b, t, hd] in x's dtype."""
    freqs = (inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
             @ position_ids[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _attention(attn: torch.nn.Module, inv_freq: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
               position_ids: torch.Tensor) -> torch.Tensor:
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, attn.n_kv, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, attn.n_kv, attn.head_dim).transpose(1, 2)
    cos, sin = _rotary(inv_freq, v, position_ids)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    rep = attn.n_heads // attn.n_kv
    if rep > 1:
        k = k[:, :, None].expand(b, attn.n_kv, rep, t, attn.head_dim).reshape(b, attn.n_heads, t, attn.head_dim)
        v = v[:, :, None].expand(b, attn.n_kv, rep, t, attn.head_dim).reshape(b, attn.n_heads, t, attn.head_dim)
    weights = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(attn.head_dim)
    weights = weights + mask[:, :, :, : k.shape[-2]]
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = F.dropout(weights, p=0.0, training=False)
    out = torch.matmul(weights, v).transpose(1, 2).contiguous().reshape(b, t, -1)
    return attn.o_proj(out)


def _causal_mask(x: torch.Tensor) -> torch.Tensor:
    """MonetModel._update_causal_mask for eager attention without a cache or padding."""
    b, t = x.shape[:2]
    positions = torch.arange(t, device=x.device)
    mask = torch.full((t, t + 1), fill_value=torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device)
    if t != 1:
        mask = torch.triu(mask, diagonal=1)
    mask *= torch.arange(t + 1, device=x.device) > positions.reshape(-1, 1)
    return mask[None, None, :, :].expand(b, 1, -1, -1)


def route(router: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Published MonetRouter.forward (eval mode). x: [b, t, d] -> g1, g2 [b, t, H, E] (fp32)."""
    out = []
    for w, norm in ((router.w1, router.norm1), (router.w2, router.norm2)):
        z = w(x).unflatten(-1, (router.heads, -1)).float()
        n = norm(z.transpose(2, 3).flatten(0, -2)).view(z.size(0), z.size(1), z.size(3), -1).transpose(2, 3)
        thresh = n.amax(-1, keepdim=True).clamp_max_(router.sigma)
        out.append(F.softmax(torch.where(n >= thresh, z, -1e10), dim=-1))
    return out[0], out[1]


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


def hd(moe: torch.nn.Module, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor | None
       ) -> torch.Tensor:
    """Published MonetMoHDE.forward; with a mask, the paper's expansion of all E*E weights."""
    g1, g2 = g1.type_as(x), g2.type_as(x)
    a = _relu2(moe.u(x).unflatten(-1, (moe.experts, -1)))
    if mask is None:
        return moe.v(torch.einsum("btim,bthi,bthj->btjm", a, g1, g2).flatten(-2)) + torch.einsum(
            "bthj,jd->btd", g2, moe.b)
    G = torch.einsum("bthi,bthj->btij", g1, g2) * ~mask
    return moe.v(torch.einsum("btim,btij->btjm", a, G).flatten(-2)) + torch.einsum("btij,jd->btd", G, moe.b)


def vd(moe: torch.nn.Module, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor | None
       ) -> torch.Tensor:
    """Published MonetMoVDE.forward; with a mask, the paper's expansion of all E*E weights."""
    g1, g2 = g1.type_as(x), g2.type_as(x)
    a1 = _relu2(moe.u1(x).unflatten(-1, (moe.experts, -1)))
    a2 = _relu2(moe.u2(x).unflatten(-1, (moe.experts, -1)))
    b1, b2 = moe.b1.type_as(x), moe.b2.type_as(x)
    if mask is None:
        x11 = moe.v11(torch.einsum("btim,bthi->btim", a1, g1).flatten(-2))
        x12 = moe.v12(torch.einsum("btjm,bthj,bthi->btim", a2, g2, g1).flatten(-2))
        x13 = torch.einsum("bthi,id->btd", g1, b1)
        x21 = moe.v21(torch.einsum("btim,bthi,bthj->btjm", a1, g1, g2).flatten(-2))
        x22 = moe.v22(torch.einsum("btjm,bthj->btjm", a2, g2).flatten(-2))
        x23 = torch.einsum("bthj,jd->btd", g2, b2)
    else:
        G = torch.einsum("bthi,bthj->btij", g1, g2) * ~mask
        x11 = moe.v11(torch.einsum("btim,btij->btim", a1, G).flatten(-2))
        x12 = moe.v12(torch.einsum("btjm,btij->btim", a2, G).flatten(-2))
        x13 = torch.einsum("btij,id->btd", G, b1)
        x21 = moe.v21(torch.einsum("btim,btij->btjm", a1, G).flatten(-2))
        x22 = moe.v22(torch.einsum("btjm,btij->btjm", a2, G).flatten(-2))
        x23 = torch.einsum("btij,jd->btd", G, b2)
    return torch.cat((x11 + x12 + x13, x21 + x22 + x23), dim=-1)


@torch.no_grad()
def forward(model: MonetForCausalLM, input_ids: torch.Tensor, routing: list | None = None) -> torch.Tensor:
    """Logits of `model` (its weights and installed masks) computed the published way; appends
    each routing group's (g1, g2) to `routing` (output_router_probs)."""
    inner = model.model
    experts = hd if model.config.moe_decompose == "horizontal" else vd
    h = inner.embed_tokens(input_ids)
    position_ids = torch.arange(input_ids.shape[1], device=h.device)[None]
    mask = _causal_mask(h)
    g1 = g2 = expert_mask = None
    for layer in inner.layers:
        h = h + _attention(layer.self_attn, inner.rotary.inv_freq, _rms(layer.input_layernorm, h), mask, position_ids)
        u = _rms(layer.post_attention_layernorm, h)
        if layer.router is not None:
            g1, g2 = route(layer.router, u)
            expert_mask = layer.router.expert_mask
            if routing is not None:
                routing.append((g1, g2))
        h = h + experts(layer.moe, u, g1, g2, expert_mask)
    return model.lm_head(_rms(inner.norm, h)).float()
