"""The cost model (kernels/routed.choose) against measurement: one expert layer, dense vs routed.

At each layer shape, with settled routing (about k of E active per head, as trained) and with
unsettled routing (statistics 0/1: far more active), time the dense and the routed layer on the
same inputs and check that the cost model picks the faster one (`ok`), or one within 10% of it. The
routed layer runs as load_model runs it (kernels.dispatch: the C grouped GEMMs in fp32 where they
build), and the choice is the dispatcher's.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from monet_edit.kernels import dispatch, routed
from monet_edit.model import precision

from . import common


def _routing(model, ids: torch.Tensor, settled: bool):
    router = model.model.routers()[0]
    if not settled:
        for norm in (router.norm1, router.norm2):
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0)
    with torch.no_grad():
        g1, g2 = model(ids, output_routing=True).routing[0]
    return g1.flatten(0, 1), g2.flatten(0, 1)


def run(configs: dict[str, dict], thread_counts: tuple[int, ...], repeats: int, tokens: int = 1024) -> Iterator[dict]:
    dtypes = (torch.float32, torch.bfloat16) if precision.native_bf16() else (torch.float32,)
    for label, fields in configs.items():
        for decompose in ("horizontal", "vertical"):
            for settled in (True, False):
                for dtype in dtypes:
                    yield from _case(label, fields, decompose, settled, thread_counts, repeats, tokens, dtype)


def _case(label, fields, decompose, settled, thread_counts, repeats, tokens, dtype=torch.float32) -> Iterator[dict]:
    model = common.build(fields, decompose)
    cfg = model.config
    ids = common.token_ids(model, max(1, tokens // 256), min(tokens, 256), seed=7)
    g1, g2 = _routing(model, ids, settled)
    x = torch.randn(g1.shape[0], cfg.hidden_size, generator=torch.Generator().manual_seed(8)).to(dtype)
    moe = model.model.layers[0].moe.to(dtype)
    layer = dispatch.hd_routed if decompose == "horizontal" else dispatch.vd_routed  # as load_model runs it
    pairs = routed.active_counts(g1, g2)
    plan = dispatch.expert_plan(g1, g2, None, cfg.moe_dim, cfg.hidden_size, False, decompose, dtype)
    chosen = "dense" if plan is None else "routed"
    fns = {"dense": lambda: _dense(moe, x, g1, g2), "routed": lambda: layer(moe, x, routed.plan(g1, g2))}
    for count in thread_counts:
        with common.threads(count), torch.no_grad():
            t = common.best_times(fns, repeats)
        faster = "routed" if t["routed"] < t["dense"] else "dense"
        yield common.record(
            "cost", f"{common.TAGS[decompose]} {label} {'settled' if settled else 'unsettled'} layer, "
            f"{precision.name(dtype)}, {count} thread(s): dense / routed time", t["dense"] / t["routed"], "speed-up of routed",
            ok=chosen == faster or t[chosen] <= 1.1 * t[faster], config=label, decompose=decompose, threads=count,
            settled=settled, dtype=precision.name(dtype), grouped_gemms=_grouped(dtype), density=round(sum(pairs) / (2 * g1.shape[0] * cfg.moe_experts), 4), chosen=chosen,
            faster=faster)


def _grouped(dtype: torch.dtype) -> str:
    """Which grouped GEMMs the routed layer runs: the C ones (kernels.gathered) or torch's."""
    return "C" if dispatch.use_native(torch.empty(0, dtype=dtype)) else "torch"


def _dense(moe, x, g1, g2):
    with common.env(MONET_EDIT_SPARSE_TOKENS="0"):
        return moe(x, g1, g2, None)
