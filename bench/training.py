"""Training throughput (tokens/s) of `train_step`, the trainer's own step, per model shape,
compute precision (fp32, bf16 autocast) and thread count: what chooses the embedded model's
recipe (recipes/tiny.toml). Every variant starts from the same random weights and trains on the
same token rows; ratios are against fp32 at the same shape and thread count."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from monet_edit.model.config import MonetConfig
from monet_edit.model.monet import MonetForCausalLM
from monet_edit.training import train as train_mod

from . import common

# The recipe's shape (tiny v1 and v2) and the alternatives weighed against it: the same shape in VD;
# fewer, larger sub-experts (E=64, m=8: same expert parameters, 4x fewer experts); deeper and
# narrower groups (6 layers in 3 groups).
TINY = dict(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, moe_experts=128,
            moe_dim=4, moe_heads=4, moe_topk=8, moe_groups=2, max_position_embeddings=512)
SHAPES = {
    "tiny HD": dict(TINY, moe_decompose="horizontal"),
    "tiny VD": dict(TINY, moe_decompose="vertical"),
    "E=64 m=8 HD": dict(TINY, moe_experts=64, moe_dim=8, moe_decompose="horizontal"),
    "6 layers HD": dict(TINY, num_hidden_layers=6, moe_groups=2, moe_decompose="horizontal"),
}
QUICK_SHAPES = {"quick HD": dict(common.QUICK, moe_decompose="horizontal")}
OPTIM = dict(lr=3e-3, beta1=0.9, beta2=0.95, weight_decay=0.1, grad_clip=1.0, aux_weight=0.01)


def _trainer(fields: dict, precision: str, rows: torch.Tensor):
    """A closure running one train_step on a fresh copy of the shape's seed-0 model."""
    model = MonetForCausalLM(MonetConfig(**fields).validate()).init_weights(0)
    model.train()
    optim = dict(OPTIM, precision=precision)
    opt = train_mod.make_optimizer(model, optim)
    return lambda: train_mod.train_step(model, opt, rows, optim)


def run(shapes: dict[str, dict], thread_counts: tuple[int, ...], repeats: int, batch: int, seq: int
        ) -> Iterator[dict]:
    for label, fields in shapes.items():
        rows = torch.randint(0, fields["vocab_size"], (batch, seq + 1), generator=torch.Generator().manual_seed(3))
        cfg = MonetConfig(**fields).validate()
        params = MonetForCausalLM(cfg).num_parameters()
        for count in thread_counts:
            with common.threads(count):
                fns = {p: _trainer(fields, p, rows) for p in train_mod.PRECISIONS}
                best = common.best_times(fns, repeats)
            tokens = batch * seq
            rate = {p: round(tokens / t, 1) for p, t in best.items()}
            yield common.record("training", f"{label}, {count} thread(s): bf16 autocast / fp32 tokens/s",
                                best["fp32"] / best["bf16"], "speed ratio", threads=count, shape=label,
                                parameters=params, tokens_per_step=tokens, tokens_per_s=rate,
                                experts_per_layer=cfg.moe_experts ** 2)
