"""The 1.4B shape in bf16 on CUDA: tokens/s, MFU, Triton vs torch kernels, routed vs dense, masked.

Skipped (one line saying so) without a CUDA device. The first Triton call of each kernel family
is checked against torch by the dispatcher (kernels/dispatch.py); a failed check is a warning line
on stderr and the torch kernel runs, so every figure here is of code that computed right.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from monet_edit.kernels import dispatch

from . import common

GPU_1_4B = dict(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                moe_dim=16, moe_experts=512, moe_groups=4, moe_heads=8, moe_topk=8, max_position_embeddings=2048)
PEAK_BF16 = (("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40", 181e12))  # dense, FLOP/s


def peak_bf16() -> float | None:
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def run(quick: bool, repeats: int) -> Iterator[dict]:
    if not torch.cuda.is_available():
        yield dict(figure="gpu", name="GPU figures", skipped="no CUDA device (run `make bench` on a GPU machine)")
        return
    fields = common.QUICK if quick else GPU_1_4B
    batch, seq = (2, 64) if quick else (8, 1024)
    for decompose in ("vertical", "horizontal"):
        yield from _case(fields, decompose, batch, seq, repeats)
        torch.cuda.empty_cache()


def _case(fields, decompose, batch, seq, repeats) -> Iterator[dict]:
    tag = common.TAGS[decompose]
    model = common.build(fields, decompose, device="cuda", dtype=torch.bfloat16, settle_tokens=4096)
    ids = common.token_ids(model, batch, seq).cuda()
    masks = common.random_masks(model, 0.02)

    def variant(kernels: str):
        with common.env(MONET_EDIT_KERNELS=kernels):
            return model(ids).logits

    fns = {"auto": lambda: variant("auto"), "triton dense": lambda: variant("triton,dense"),
           "torch dense": lambda: variant("torch,dense"),
           "masked": lambda: common.with_masks(model, masks, lambda: variant("auto"))}
    with torch.no_grad():
        torch.testing.assert_close(fns["auto"]().float(), fns["torch dense"]().float(), atol=0.1, rtol=0.05)
        t = common.best_times(fns, repeats)
    tokens = ids.numel()
    peak = peak_bf16()
    flops = common.flops_per_token(model.config, seq) * tokens
    yield common.record("gpu", f"GPU {tag} 1.4B bf16: auto vs torch dense kernels", t["torch dense"] / t["auto"],
                        "speed-up", tokens_per_s=round(tokens / t["auto"]),
                        mfu=None if peak is None else round(flops / t["auto"] / peak, 4),
                        triton_dense_speedup=round(t["torch dense"] / t["triton dense"], 3),
                        failed_checks=[list(map(str, k)) for k, ok in dispatch.VERDICTS.items() if not ok],
                        device=torch.cuda.get_device_name())
    yield common.record("gpu", f"GPU {tag} 1.4B bf16: masked 2% vs unmasked", t["masked"] / t["auto"],
                        "time ratio", "<= 1.05")
