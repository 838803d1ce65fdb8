"""The baseline the bench measures against: Monet's published formulas as a plain einsum chain.

This mirrors the public Monet code (github.com/dmis-lab/Monet, modeling_monet.py): the expert
layers are chains of einsums over [batch, tokens, heads, experts] tensors, the router thresholds
with a BatchNorm and `torch.where`, and masking (as in the paper's code) expands the composite
weights G [batch, tokens, E, E] of all E*E experts and zeroes the masked ones. It shares every
weight with one of our models (no copies), so both run on the same weights. Not used by the tool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monet_edit.model.monet import MonetForCausalLM


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


def route(router: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Public code's MonetRouter.forward (eval mode). x: [b, t, d] -> g1, g2 [b, t, H, E]."""
    out = []
    for w, norm in ((router.w1, router.norm1), (router.w2, router.norm2)):
        z = w(x).unflatten(-1, (router.heads, -1)).float()
        n = norm(z.transpose(2, 3).flatten(0, -2)).view(z.size(0), z.size(1), z.size(3), -1).transpose(2, 3)
        thresh = n.amax(-1, keepdim=True).clamp_max_(router.sigma)
        out.append(F.softmax(torch.where(n >= thresh, z, -1e10), dim=-1))
    return out[0], out[1]


def hd(moe: nn.Module, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor | None
       ) -> torch.Tensor:
    """Public MonetMoHDE.forward; with a mask, the paper's expansion of all E*E weights."""
    g1, g2 = g1.type_as(x), g2.type_as(x)
    a = relu2(moe.u(x).unflatten(-1, (moe.experts, -1)))
    if mask is None:
        z = torch.einsum("btim,bthi->bthm", a, g1)
        slots = torch.einsum("bthm,bthj->btjm", z, g2)
        return moe.v(slots.flatten(-2)) + torch.einsum("bthj,jd->btd", g2, moe.b.type_as(x))
    G = torch.einsum("bthi,bthj->btij", g1, g2) * ~mask
    slots = torch.einsum("btim,btij->btjm", a, G)
    return moe.v(slots.flatten(-2)) + torch.einsum("btij,jd->btd", G, moe.b.type_as(x))


def vd(moe: nn.Module, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor | None
       ) -> torch.Tensor:
    """Public MonetMoVDE.forward; with a mask, the paper's expansion of all E*E weights."""
    g1, g2 = g1.type_as(x), g2.type_as(x)
    a1 = relu2(moe.u1(x).unflatten(-1, (moe.experts, -1)))
    a2 = relu2(moe.u2(x).unflatten(-1, (moe.experts, -1)))
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
def forward(model: MonetForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of `model` (its weights and installed masks) computed the public-code way."""
    inner = model.model
    experts = hd if model.config.moe_decompose == "horizontal" else vd
    B, T = input_ids.shape
    h = inner.embed_tokens(input_ids)
    cos, sin = inner.rotary(torch.arange(T, device=h.device), h.dtype)
    g1 = g2 = mask = None
    for layer in inner.layers:
        h = h + layer.self_attn(layer.input_layernorm(h), cos, sin, None)[0]
        u = layer.post_attention_layernorm(h)
        if layer.router is not None:
            g1, g2 = route(layer.router, u)
            mask = layer.router.expert_mask
        h = h + experts(layer.moe, u, g1, g2, mask)
    return model.lm_head(inner.norm(h))
