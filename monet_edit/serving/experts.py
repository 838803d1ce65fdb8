"""Monet's router and expert layers for vLLM, tensor parallel over the sub-experts.

Each rank holds a contiguous 1/tp of the E sub-experts of both sides: their rows of U (column
parallel) and their columns of V (row parallel), plus their rows of the bias tables b. The
expert mixing only needs, per token, the head sums z_h = sum_i g[h, i] a_i ([N, H, m], small),
so one all-reduce of z and one of the layer output per layer are the whole communication. The
router is replicated: every rank computes the same g1, g2 (and the same edited pairs), so an
edited pair (i, j) whose two sub-experts live on different ranks only moves the activation rows
it needs (an all-reduce of [pairs, m] that one rank fills).

The math is monet-edit's (monet_edit.model.monet, kernels.reference): HD
E_ij(x) = V_j relu2(U_i x + c_i) + b_j; VD concatenates V11_i a1_i + V12_i a2_j + b1_i and
V21_j a1_i + V22_j a2_j + b2_j; both weighted by G_ij = sum_h g1[h, i] g2[h, j].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.utils import set_weight_attrs

from .. import kernels
from ..model.config import MonetConfig
from .edits import Hits


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


class Shard:
    """This rank's slice [lo, hi) of the E sub-experts."""

    def __init__(self, experts: int) -> None:
        self.tp = get_tensor_model_parallel_world_size()
        if experts % self.tp:
            raise ValueError(f"moe_experts {experts} is not divisible by the tensor parallel size {self.tp}")
        self.local = experts // self.tp
        self.lo = get_tensor_model_parallel_rank() * self.local
        self.hi = self.lo + self.local

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return tensor_model_parallel_all_reduce(x) if self.tp > 1 else x

    def owned(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.lo) & (ids < self.hi)

    def rows(self, a: torch.Tensor, token: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """a[token, id] for sub-experts of any rank ([P, width]); a is this rank's [N, local, width]."""
        if self.tp == 1:
            return a[token, ids]
        own = self.owned(ids)
        out = a.new_zeros(token.shape[0], a.shape[-1])
        out[own] = a[token[own], ids[own] - self.lo]
        return self.reduce(out)

    def add_rows(self, out: torch.Tensor, token: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> None:
        """out[token, id] += values for the owned sub-experts; out is [N, local] or [N, local, width]."""
        own = self.owned(ids) if self.tp > 1 else slice(None)
        flat = token[own] * self.local + (ids[own] - self.lo)
        out.view(-1, *out.shape[2:]).index_add_(0, flat, values[own])


def _sharded_rows(param: nn.Parameter, shard: Shard) -> None:
    """Load a [E, width] table by keeping this rank's rows."""
    def load(p: nn.Parameter, loaded: torch.Tensor) -> None:
        if loaded.shape[0] != shard.local * shard.tp or loaded.shape[1:] != p.shape[1:]:
            raise ValueError(f"bias table has shape {list(loaded.shape)}, expected "
                             f"[{shard.local * shard.tp}, {p.shape[1]}]")
        p.data.copy_(loaded[shard.lo:shard.hi])

    set_weight_attrs(param, {"weight_loader": load})


class BatchNormStats(nn.Module):
    """The running mean and variance of one router side (kept in fp32, as load_model keeps them)."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.running_mean = nn.Parameter(torch.zeros(heads, dtype=torch.float32), requires_grad=False)
        self.running_var = nn.Parameter(torch.ones(heads, dtype=torch.float32), requires_grad=False)


class MonetRouter(nn.Module):
    """Replicated on every rank: (g1, g2) [N, H, E] fp32 with the BatchNorm threshold and softmax."""

    def __init__(self, config: MonetConfig, prefix: str) -> None:
        super().__init__()
        self.heads, self.experts = config.moe_heads, config.moe_experts
        width = self.heads * self.experts
        self.w1 = ReplicatedLinear(config.hidden_size, width, bias=False, prefix=f"{prefix}.w1")
        self.w2 = ReplicatedLinear(config.hidden_size, width, bias=False, prefix=f"{prefix}.w2")
        self.norm1 = BatchNormStats(self.heads)
        self.norm2 = BatchNormStats(self.heads)
        self.sigma = kernels.routing_threshold(config.moe_topk, config.moe_experts)
        # The group's edits, read from the checkpoint (edits.py); None = the expert is unchanged.
        self.expert_mask: torch.Tensor | None = None
        self.expert_scale: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None

    def _side(self, w: ReplicatedLinear, norm: BatchNormStats, u: torch.Tensor) -> torch.Tensor:
        z = w(u)[0].view(-1, self.heads, self.experts).float()
        return kernels.route(z, norm.running_mean, norm.running_var, self.sigma)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._side(self.w1, self.norm1, u), self._side(self.w2, self.norm2, u)


class MonetHDExperts(nn.Module):
    """Horizontal decomposition: slot j = sum_i G_ij a_i, output V . slots + (sum_i G_ij) b_j."""

    def __init__(self, config: MonetConfig, prefix: str) -> None:
        super().__init__()
        E, m, d = config.moe_experts, config.moe_dim, config.hidden_size
        self.shard, self.m = Shard(E), m
        self.u = ColumnParallelLinear(d, E * m, bias=True, prefix=f"{prefix}.u")
        self.v = RowParallelLinear(E * m, d, bias=False, reduce_results=False, prefix=f"{prefix}.v")
        self.b = nn.Parameter(torch.empty(self.shard.local, d), requires_grad=False)
        _sharded_rows(self.b, self.shard)

    def forward(self, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, hits: Hits | None) -> torch.Tensor:
        s, N = self.shard, x.shape[0]
        a = relu2(self.u(x)[0]).view(N, s.local, self.m)
        g1 = g1[:, :, s.lo:s.hi].to(a.dtype)
        g2 = g2[:, :, s.lo:s.hi].to(a.dtype)
        z = s.reduce(torch.bmm(g1, a))                    # [N, H, m]: sum_i g1[h, i] a_i
        slots = torch.bmm(g2.transpose(1, 2), z)          # [N, E/tp, m]: sum_h g2[h, j] z_h
        bias = g2.sum(1)                                  # [N, E/tp]: sum_i G_ij
        if hits is not None:
            w = hits.weight.to(a.dtype)
            s.add_rows(slots, hits.token, hits.j, w[:, None] * s.rows(a, hits.token, hits.i))
            s.add_rows(bias, hits.token, hits.j, w)
        return s.reduce(self.v(slots.flatten(1))[0] + bias @ self.b)


class MonetVDExperts(nn.Module):
    """Vertical decomposition; U1 and U2 run as one merged column-parallel matmul."""

    def __init__(self, config: MonetConfig, prefix: str) -> None:
        super().__init__()
        E, d = config.moe_experts, config.hidden_size
        half, d2 = E * config.moe_dim // 2, d // 2
        self.shard, self.width = Shard(E), config.moe_dim // 2
        self.u12 = MergedColumnParallelLinear(d, [half, half], bias=True, prefix=f"{prefix}.u12")
        self.v11, self.v12, self.v21, self.v22 = (
            RowParallelLinear(half, d2, bias=False, reduce_results=False, prefix=f"{prefix}.{name}")
            for name in ("v11", "v12", "v21", "v22"))
        self.b1 = nn.Parameter(torch.empty(self.shard.local, d2), requires_grad=False)
        self.b2 = nn.Parameter(torch.empty(self.shard.local, d2), requires_grad=False)
        _sharded_rows(self.b1, self.shard)
        _sharded_rows(self.b2, self.shard)

    def forward(self, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, hits: Hits | None) -> torch.Tensor:
        s, N = self.shard, x.shape[0]
        a1, a2 = (t.reshape(N, s.local, self.width) for t in relu2(self.u12(x)[0]).chunk(2, dim=-1))
        g1 = g1[:, :, s.lo:s.hi].to(a1.dtype)
        g2 = g2[:, :, s.lo:s.hi].to(a1.dtype)
        r1, r2 = g1.sum(1), g2.sum(1)                      # [N, E/tp]: sum_j G_ij and sum_i G_ij
        z1, z2 = s.reduce(torch.cat((torch.bmm(g1, a1), torch.bmm(g2, a2)), dim=-1)).chunk(2, dim=-1)
        top_cross = torch.bmm(g1.transpose(1, 2), z2)     # slot i: sum_j G_ij a2_j
        bottom_cross = torch.bmm(g2.transpose(1, 2), z1)  # slot j: sum_i G_ij a1_i
        if hits is not None:
            w = hits.weight.to(a1.dtype)
            s.add_rows(r1, hits.token, hits.i, w)
            s.add_rows(r2, hits.token, hits.j, w)
            s.add_rows(top_cross, hits.token, hits.i, w[:, None] * s.rows(a2, hits.token, hits.j))
            s.add_rows(bottom_cross, hits.token, hits.j, w[:, None] * s.rows(a1, hits.token, hits.i))
        top = (self.v11((r1.unsqueeze(-1) * a1).flatten(1))[0] + self.v12(top_cross.flatten(1))[0]
               + r1 @ self.b1)
        bottom = (self.v21(bottom_cross.flatten(1))[0] + self.v22((r2.unsqueeze(-1) * a2).flatten(1))[0]
                  + r2 @ self.b2)
        return s.reduce(torch.cat((top, bottom), dim=-1))
