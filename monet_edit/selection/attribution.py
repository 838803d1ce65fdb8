"""Attribution: the first-order effect on a text's loss of scaling each expert.

Give expert (i, j) of routing group g a scale s_ij multiplying its routing weight in every layer of
the group (s = 0 is the mask). At s = 1,

    dL/ds_ij = sum over the group's layers and the tokens t of  G_ij(t) * <dL/dy_t, E_ij(x_t)>,

y_t the expert layer's output. Removing the expert changes the loss by about -dL/ds_ij. Only each
token's active pairs carry weight (G_ij(t) > 0 needs g1[h, i] and g2[h, j] both non-zero for some
head: at most H*k sub-experts per side), so the sum runs over those pairs alone, gathered per token:
[tokens, H*k, H*k] at a time, never [tokens, E, E]; it scales to E = 512 and 6 groups.

HD: E_ij(x) = V_j a_i + b_j, a = relu2(U x + c), so <g, E_ij> = a_i . (V_j^T g) + b_j . g.
VD: E_ij = [V11_i a1_i + V12_i a2_j + b1_i ; V21_j a1_i + V22_j a2_j + b2_j], so with g = [gt ; gb]
<g, E_ij> = a1_i.(V11_i^T gt) + b1_i.gt + (V12_i^T gt).a2_j + a1_i.(V21_j^T gb) + a2_j.(V22_j^T gb) + b2_j.gb.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.monet import MonetHDExperts, relu2


def _active(g: torch.Tensor) -> torch.Tensor:
    """[N, w] ids of the sub-experts with weight for any head (padded with weightless ids)."""
    s = g.sum(1)
    width = max(1, int((s > 0).sum(1).max()))
    return s.topk(width, dim=1).indices


def pair_effects(moe, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, gy: torch.Tensor,
                 out: torch.Tensor) -> None:
    """Add sum_t G_ij(t) <gy_t, E_ij(x_t)> into out [E*E] for one expert layer (no autograd)."""
    N, E = x.shape[0], g1.shape[-1]
    i_idx, j_idx = _active(g1), _active(g2)  # [N, w1], [N, w2]

    def pick(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # t [N, E, ...] -> [N, w, ...]
        return t.gather(1, idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))

    if isinstance(moe, MonetHDExperts):
        a = relu2(moe.u(x)).view(N, E, -1)
        p = (gy @ moe.v.weight).view(N, E, -1)  # V_j^T g for every j
        q = gy @ moe.b.T  # b_j . g
        P = pick(a, i_idx) @ pick(p, j_idx).transpose(1, 2) + pick(q, j_idx)[:, None, :]
    else:
        d2 = gy.shape[1] // 2
        gt, gb = gy[:, :d2], gy[:, d2:]
        a1, a2 = relu2(moe.u1(x)).view(N, E, -1), relu2(moe.u2(x)).view(N, E, -1)
        self_i = (a1 * (gt @ moe.v11.weight).view(N, E, -1)).sum(-1) + gt @ moe.b1.T  # [N, E], i only
        self_j = (a2 * (gb @ moe.v22.weight).view(N, E, -1)).sum(-1) + gb @ moe.b2.T  # [N, E], j only
        r = (gt @ moe.v12.weight).view(N, E, -1)  # V12_i^T gt, meets a2_j
        w = (gb @ moe.v21.weight).view(N, E, -1)  # V21_j^T gb, meets a1_i
        P = (pick(self_i, i_idx)[:, :, None] + pick(self_j, j_idx)[:, None, :]
             + pick(r, i_idx) @ pick(a2, j_idx).transpose(1, 2) + pick(a1, i_idx) @ pick(w, j_idx).transpose(1, 2))
    G = torch.einsum("nhi,nhj->nij", pick(g1.transpose(1, 2), i_idx).transpose(1, 2),
                     pick(g2.transpose(1, 2), j_idx).transpose(1, 2))
    flat = i_idx[:, :, None] * E + j_idx[:, None, :]
    out.index_add_(0, flat.reshape(-1), (G * P).reshape(-1).to(out.dtype))


def expert_gradients(model, rows: torch.Tensor, batch_size: int = 8) -> tuple[torch.Tensor, int]:
    """(sum over the rows' scored tokens of dL/ds per expert [groups, E, E] float64, tokens).

    L is the summed next-token negative log likelihood; divide by the tokens for a per-token effect."""
    cfg = model.config
    groups, E, gsize = cfg.num_groups, cfg.moe_experts, cfg.moe_groups
    total = torch.zeros(groups, E * E, dtype=torch.float64)
    device = next(model.parameters()).device
    acc = torch.zeros(groups, E * E, dtype=torch.float64, device=device)
    state: dict = {}
    hooks = []

    def capture(layer_idx: int):
        def hook(module, args, output):
            x, g1, g2 = (a.detach() for a in args[:3])
            group = layer_idx // gsize

            def backward(gy):
                with torch.no_grad():
                    pair_effects(module, x.float(), g1.float(), g2.float(), gy.float(), acc[group])

            output.register_hook(backward)
        return hook

    for idx, layer in enumerate(model.model.layers):
        hooks.append(layer.moe.register_forward_hook(capture(idx)))
    hooks.append(model.model.embed_tokens.register_forward_hook(lambda m, a, out: out.requires_grad_(True)))
    wanted = [p.requires_grad for p in model.parameters()]
    tokens = 0
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            for start in range(0, rows.shape[0], batch_size):
                chunk = rows[start:start + batch_size].to(device)
                logits = model(chunk[:, :-1]).logits.float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                       reduction="sum")
                loss.backward()
                tokens += chunk[:, 1:].numel()
    finally:
        for h in hooks:
            h.remove()
        for p, w in zip(model.parameters(), wanted, strict=True):
            p.requires_grad_(w)
        state.clear()
    total += acc.cpu()
    return total.view(groups, E, E), tokens
