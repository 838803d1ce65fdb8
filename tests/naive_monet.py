"""A deliberately naive Monet forward, written from the model's math only (README design notes).

It materialises every composite weight G_ij and every expert output E_ij(x) for every token, and
shares no code with monet_edit's model: it reads the raw state dict by tensor name. Only usable
for tiny configs (E = 8..16); the test suite compares our model against it.
"""

from __future__ import annotations

import math

import torch


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta):
    # x: [heads, T, hd]; pairs (t, t + hd/2) rotate together (Hugging Face Llama layout).
    hd = x.shape[-1]
    out = torch.empty_like(x)
    for p in range(hd // 2):
        freq = 1.0 / theta ** (2 * p / hd)
        ang = pos.double() * freq
        c, s = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
        a, b = x[..., p], x[..., p + hd // 2]
        out[..., p] = a * c - b * s
        out[..., p + hd // 2] = b * c + a * s
    return out


def _attention(x, sd, pre, cfg):
    T, d = x.shape
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = d // nh
    q = (x @ sd[pre + "q_proj.weight"].T).view(T, nh, hd).transpose(0, 1)
    k = (x @ sd[pre + "k_proj.weight"].T).view(T, nkv, hd).transpose(0, 1)
    v = (x @ sd[pre + "v_proj.weight"].T).view(T, nkv, hd).transpose(0, 1)
    pos = torch.arange(T)
    q, k = _rope(q, pos, cfg["rope_theta"]), _rope(k, pos, cfg["rope_theta"])
    out = torch.zeros(nh, T, hd, dtype=x.dtype)
    for h in range(nh):
        kh, vh = k[h // (nh // nkv)], v[h // (nh // nkv)]
        for t in range(T):
            scores = (kh[: t + 1] @ q[h, t]) / math.sqrt(hd)
            out[h, t] = torch.softmax(scores, 0) @ vh[: t + 1]
    return out.transpose(0, 1).reshape(T, d) @ sd[pre + "o_proj.weight"].T


def _router_side(u, w, mean, var, H, E, k):
    z = (u @ w.T).view(H, E)
    n = (z - mean[:, None]) / torch.sqrt(var[:, None] + 1e-5)
    sigma = torch.special.ndtri(torch.tensor(1 - k / E, dtype=torch.float64)).item()
    g = torch.zeros(H, E, dtype=u.dtype)
    for h in range(H):
        t = min(n[h].max().item(), sigma)
        keep = n[h] >= t
        g[h, keep] = torch.softmax(z[h, keep], 0)
    return g


def _expert(x, sd, pre, cfg, i, j):
    """Output of the single expert (i, j) on one token x."""
    m = cfg["moe_dim"]
    relu2 = lambda t: torch.relu(t) ** 2  # noqa: E731
    if cfg["moe_decompose"] == "horizontal":
        U, c = sd[pre + "u.weight"][i * m:(i + 1) * m], sd[pre + "u.bias"][i * m:(i + 1) * m]
        V = sd[pre + "v.weight"][:, j * m:(j + 1) * m]
        return V @ relu2(U @ x + c) + sd[pre + "b"][j]
    h = m // 2
    a1 = relu2(sd[pre + "u1.weight"][i * h:(i + 1) * h] @ x + sd[pre + "u1.bias"][i * h:(i + 1) * h])
    a2 = relu2(sd[pre + "u2.weight"][j * h:(j + 1) * h] @ x + sd[pre + "u2.bias"][j * h:(j + 1) * h])
    top = (sd[pre + "v11.weight"][:, i * h:(i + 1) * h] @ a1 + sd[pre + "v12.weight"][:, i * h:(i + 1) * h] @ a2
           + sd[pre + "b1"][i])
    bottom = (sd[pre + "v21.weight"][:, j * h:(j + 1) * h] @ a1 + sd[pre + "v22.weight"][:, j * h:(j + 1) * h] @ a2
              + sd[pre + "b2"][j])
    return torch.cat((top, bottom))


def naive_logits(sd: dict, cfg: dict, ids: list[int], masks: dict | None = None,
                 scales: dict | None = None) -> torch.Tensor:
    """Logits [T, V] for one sequence; masks: {group: bool [E, E]} (True = masked); scales:
    {group: float [E, E]} multiplying each expert's routing weight (may require grad)."""
    masks, scales = masks or {}, scales or {}
    sd = {k: v.double() for k, v in sd.items()}
    E, H, k, G = cfg["moe_experts"], cfg["moe_heads"], cfg["moe_topk"], cfg["moe_groups"]
    eps = cfg["rms_norm_eps"]
    x = sd["model.embed_tokens.weight"][ids]
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        x = x + _attention(_rms(x, sd[p + "input_layernorm.weight"], eps), sd, p + "self_attn.", cfg)
        u = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        if L % G == 0:
            r = p + "router."
            g1s = [_router_side(t, sd[r + "w1.weight"], sd[r + "norm1.running_mean"],
                                sd[r + "norm1.running_var"], H, E, k) for t in u]
            g2s = [_router_side(t, sd[r + "w2.weight"], sd[r + "norm2.running_mean"],
                                sd[r + "norm2.running_var"], H, E, k) for t in u]
            mask, scale = masks.get(L // G), scales.get(L // G)
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):
            Gt = torch.einsum("hi,hj->ij", g1s[t], g2s[t])  # every composite weight
            for i in range(E):
                for j in range(E):
                    if Gt[i, j] == 0 or (mask is not None and mask[i, j]):
                        continue
                    weight = Gt[i, j] if scale is None else Gt[i, j] * scale[i, j]
                    out[t] = out[t] + weight * _expert(u[t], sd, p + "moe.", cfg, i, j)
        x = x + out
    x = _rms(x, sd["model.norm.weight"], eps)
    return x @ sd["lm_head.weight"].T
