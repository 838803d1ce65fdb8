"""Forward tokens/s: ours vs the faithful baseline, masked vs unmasked, achieved GFLOP/s.

Per config (mid, the 1.4B layer slice), decomposition and thread count, timed interleaved in one
run on the same weights: the baseline (bench/baseline.py, or the published file with
--upstream), ours as `load_model` runs it (auto: the cost model picks the routed path), ours on
the dense path, ours with the routed path's grouped GEMMs in torch where they run in C, and ours
with 2% and 15% of the experts masked. The logits of ours and the
baseline are compared before anything is timed. Targets (2 threads): >= 1.3x at mid, >= 1.8x at
the 1.4B layer shape; masked <= 1.05x unmasked.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from monet_edit.kernels import dispatch, routed
from monet_edit.model import precision

from . import baseline, common

TARGETS = {"mid": ">= 1.3", "wide": ">= 1.8"}
MASKED = (0.02, 0.15)


def routed_share(model, ids: torch.Tensor) -> float:
    """Fraction of the (token, sub-expert) pairs the routed path computes (1 = dense), group 0."""
    with torch.no_grad():
        g1, g2 = model(ids, output_routing=True).routing[0]
    g1, g2 = g1.flatten(0, 1), g2.flatten(0, 1)
    return sum(routed.active_counts(g1, g2)) / (2 * g1.shape[0] * g1.shape[-1])


def check_same_logits(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> float:
    """Max |difference| of two logit tensors; refuses to time models that disagree."""
    diff = float((ours.float() - theirs.float()).abs().max())
    scale = float(theirs.abs().max())
    if not diff <= 1e-3 * max(scale, 1.0):
        raise RuntimeError(f"{what}: logits differ by {diff:.3g} (values up to {scale:.3g}); not timing")
    return diff


def run(configs: dict[str, dict], thread_counts: tuple[int, ...], repeats: int, peaks: dict[int, float],
        batch: int = 4, seq: int = 256, baseline_for=None) -> Iterator[dict]:
    """Result lines. baseline_for(model) -> (ids -> logits): the published file under --upstream."""
    for label, fields in configs.items():
        for decompose in ("horizontal", "vertical"):
            yield from _case(label, fields, decompose, thread_counts, repeats, peaks, batch, seq, baseline_for)


def _case(label, fields, decompose, thread_counts, repeats, peaks, batch, seq, baseline_for) -> Iterator[dict]:
    model = common.build(fields, decompose)
    cfg = model.config
    tag = f"{common.TAGS[decompose]} {label}"
    ids = common.token_ids(model, batch, seq)
    ref = None if baseline_for else common.published_layout(model)
    base = baseline_for(model) if baseline_for else (lambda ids: baseline.forward(ref, ids))
    masks = {f: common.random_masks(model, f, seed=int(f * 100)) for f in MASKED}
    fns = {
        "baseline": lambda: base(ids),
        "ours": lambda: model(ids).logits,
        "ours dense": lambda: _dense(model, ids),
        **{f"masked {f:.0%}": (lambda m=m: common.with_masks(model, m, lambda: model(ids).logits))
           for f, m in masks.items()},
    }
    if dispatch.use_native(ids.new_empty(0, dtype=torch.float32)):  # the routed path runs C grouped GEMMs
        fns["ours torch kernels"] = lambda: _torch_kernels(model, ids)
    low = precision.native_bf16() and baseline_for is None  # bf16 is load_model's CPU default here
    if low:
        ours16, ref16 = common.bf16_copy(model), common.bf16_copy(ref)
        fns["ours bf16"] = lambda: ours16(ids).logits
        fns["baseline bf16"] = lambda: baseline.forward(ref16, ids)
    with torch.no_grad():
        diff = check_same_logits(fns["ours"](), fns["baseline"](), tag)
        share = routed_share(model, ids)
    active = common.active_per_head(model, ids)
    tokens = ids.numel()
    dense_flops = common.flops_per_token(cfg, seq) * tokens
    executed = common.flops_per_token(cfg, seq, expert_share=share) * tokens
    for count in thread_counts:
        with common.threads(count), torch.no_grad():
            t = common.best_times(fns, repeats)
        peak = peaks[count]
        speed = {name: tokens / s for name, s in t.items()}
        target = TARGETS.get(label) if count == 2 else None
        yield common.record(
            "forward", f"{tag} forward, {count} thread(s): ours vs baseline", t["baseline"] / t["ours"],
            "speed-up (tokens/s ours / tokens/s baseline)", target, config=label, decompose=decompose,
            threads=count, tokens=tokens, tokens_per_s={k: round(v, 1) for k, v in speed.items() if "bf16" not in k},
            dense_path_speedup=round(t["baseline"] / t["ours dense"], 3),
            torch_kernels_speedup=round(t["baseline"] / t["ours torch kernels"], 3) if "ours torch kernels" in t else None,
            active_per_head=round(active, 2),
            routed_share=round(share, 4), max_logit_diff=diff,
            gflops=dict(ours_executed=round(executed / t["ours"] / 1e9, 1),
                        ours_dense_equivalent=round(dense_flops / t["ours"] / 1e9, 1),
                        baseline=round(dense_flops / t["baseline"] / 1e9, 1), gemm_peak=round(peak / 1e9, 1)),
            peak_fraction=dict(ours=round(executed / t["ours"] / peak, 3),
                               baseline=round(dense_flops / t["baseline"] / peak, 3)))
        if low:
            yield common.record(
                "forward", f"{tag} forward, {count} thread(s): ours in bf16 (the CPU default here) vs baseline fp32",
                t["baseline"] / t["ours bf16"], "speed-up (tokens/s)", None, config=label, decompose=decompose,
                threads=count, vs_baseline_bf16=round(t["baseline bf16"] / t["ours bf16"], 3),
                tokens_per_s={k: round(tokens / t[k], 1) for k in ("baseline", "baseline bf16", "ours bf16")})
        for f in MASKED:
            yield common.record(
                "masked", f"{tag} masked {f:.0%} vs unmasked, {count} thread(s)", t[f"masked {f:.0%}"] / t["ours"],
                "time ratio", "<= 1.05", config=label, decompose=decompose, threads=count, fraction=f)


def _torch_kernels(model, ids: torch.Tensor) -> torch.Tensor:
    """Ours as before the C kernels: torch grouped GEMMs, chosen by their own cost constants."""
    with common.env(MONET_EDIT_KERNELS="torch"):
        return model(ids).logits


def _dense(model, ids: torch.Tensor) -> torch.Tensor:
    with common.env(MONET_EDIT_KERNELS="dense"):
        return model(ids).logits
