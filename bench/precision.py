"""bf16 vs fp32 compute: logit and loss differences on the packaged tiny model (held-out eval
splits) and at the 1.4B layer shape (random settled weights), routing flips, and this CPU's bf16
GEMM rate against fp32 (where bf16 has no native support it is far slower, and fp32 stays the
CPU default: monet_edit.model.precision)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from monet_edit.model import precision

from . import common


def compare(m32, m16, rows: torch.Tensor) -> dict:
    """Loss, logit and routing differences of one model in fp32 and in bf16 on rows [N, T+1]."""
    with torch.no_grad():
        o32 = m32(rows[:, :-1], output_routing=True)
        o16 = m16(rows[:, :-1], output_routing=True)
    l32, l16 = o32.logits.float(), o16.logits.float()
    target = rows[:, 1:].reshape(-1)
    loss32 = float(F.cross_entropy(l32.reshape(-1, l32.shape[-1]), target))
    loss16 = float(F.cross_entropy(l16.reshape(-1, l16.shape[-1]), target))
    kl = F.kl_div(l16.log_softmax(-1), l32.log_softmax(-1), log_target=True, reduction="none").sum(-1).mean()
    flips = [float(((a > 0) != (b > 0)).float().mean()) for p, q in zip(o32.routing, o16.routing, strict=True)
             for a, b in zip(p, q, strict=True)]
    return dict(loss_fp32=round(loss32, 6), loss_bf16=round(loss16, 6), loss_delta=loss16 - loss32,
                max_logit_diff=float((l16 - l32).abs().max()), mean_logit_diff=float((l16 - l32).abs().mean()),
                kl=float(kl), argmax_agreement=float((l16.argmax(-1) == l32.argmax(-1)).float().mean()),
                routing_flips=sum(flips) / len(flips))


def run(corpora: tuple[str, ...], tokens: int, wide: dict, repeats: int, label: str = "1.4B layer shape"
        ) -> Iterator[dict]:
    f32, b16 = common.gemm_peak(torch.float32, repeats=repeats), common.gemm_peak(torch.bfloat16, size=512,
                                                                                   repeats=repeats)
    yield common.record("precision", "bf16 vs fp32 GEMM rate on this CPU", b16 / f32, "speed ratio",
                        native_bf16=precision.native_bf16(), default=str(precision.cpu_dtype()).removeprefix("torch."),
                        gflops=dict(fp32=round(f32 / 1e9, 1), bf16=round(b16 / 1e9, 1)))
    if corpora:
        from monet_edit import load_model, load_tokenizer
        from monet_edit.corpora import build
        from monet_edit.model.scoring import rows, token_stream

        tok = load_tokenizer("tiny")
        m32, m16 = load_model("tiny", dtype="fp32"), load_model("tiny", dtype="bf16")
        for name in corpora:
            r = rows(token_stream(tok, build(name).load("eval"), tokens), 128, name)
            d = compare(m32, m16, r)
            yield common.record("precision", f"tiny, {name} eval split: bf16 / fp32 loss", d["loss_bf16"] / d["loss_fp32"],
                                "loss ratio", model="tiny", corpus=name, tokens=r[:, 1:].numel(), **d)
    m32 = common.build(wide, "vertical")
    m16 = common.build(wide, "vertical")
    m16.load_state_dict(m32.state_dict())
    m16.to(torch.bfloat16)
    for router in m16.model.routers():  # statistics stay fp32, as load_model keeps them
        router.norm1.float()
        router.norm2.float()
    r = common.token_ids(m32, 1, 129, seed=9)
    d = compare(m32, m16, r)
    yield common.record("precision", f"{label} (random, settled): bf16 / fp32 loss",
                        d["loss_bf16"] / d["loss_fp32"], "loss ratio", model=f"{label} VD", tokens=128, **d)
