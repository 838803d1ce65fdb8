"""`make bench`: speed and memory of monet-edit's Monet paths, each as a ratio to a baseline
measured in the same run on the same weights. Prints a table and writes bench/results.json.

CPU (always): a mid-size random Monet (d=512, E=128, H=4, m=16, 4 layers, seq 256), timed with
one thread by default (`--threads`): ratios are steadier on a shared machine.
  forward       ours vs the public code's einsum chain (bench/einsum_baseline.py), HD and VD
  masked        forward with 2% / 15% of experts masked vs unmasked (target <= 1.05x)
  profile       profile pass vs plain forward (target <= 1.15x); the profile statistic S as a
                GEMM vs the naive per-token [tokens, H, E, E] expansion at E=512 (target >= 20x)
  generate      batch-1 generation tokens/s, sparse vs dense expert path (also at E=512)
  memory        peak RSS of profiling 64k / 256k / 1M tokens with streaming batches (flat)
GPU (when CUDA is present): the 1.4B shape in bf16, tokens/s, MFU, Triton vs torch kernels.

Timings interleave the variants being compared and keep each one's best of several runs, so a
busy machine slows both sides alike. `--quick` shrinks everything (the smoke test uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import einsum_baseline  # noqa: E402

from monet_edit import kernels, profiling
from monet_edit.model.config import MonetConfig
from monet_edit.model.monet import MonetForCausalLM

# Routing groups of 4 layers as in every released Monet; a vocabulary small enough that the lm_head
# weighs about what it does next to 24 expert layers (here there are 4).
MID = dict(vocab_size=8000, hidden_size=512, num_hidden_layers=4, num_attention_heads=8, moe_dim=16,
           moe_experts=128, moe_groups=4, moe_heads=4, moe_topk=8, max_position_embeddings=1024)
# Two layers of the 1.4B shape (d=2048, E=512, H=8, m=16): weights too big for the CPU caches, as
# in a real model, which is what batch-1 generation is bound by.
WIDE = dict(MID, hidden_size=2048, num_attention_heads=16, moe_experts=512, moe_heads=8,
            num_hidden_layers=2, moe_groups=2)
SMALL = dict(MID, vocab_size=1000, hidden_size=128, num_attention_heads=4, moe_dim=8,
             num_hidden_layers=2, moe_groups=2)  # memory probe: cheap enough for 1M tokens
QUICK = dict(MID, vocab_size=500, hidden_size=64, num_attention_heads=4, moe_dim=4, moe_experts=16,
             moe_heads=2, moe_topk=2, num_hidden_layers=2, moe_groups=2, max_position_embeddings=256)
GPU_1_4B = dict(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                moe_dim=16, moe_experts=512, moe_groups=4, moe_heads=8, moe_topk=8,
                max_position_embeddings=2048)


# ---------------------------------------------------------------------------- helpers

def build(fields: dict, decompose: str, seed: int = 0, device: str = "cpu",
          dtype: torch.dtype = torch.float32, calib_tokens: int = 1024) -> MonetForCausalLM:
    """A random model whose BatchNorm statistics match its scores, so about k sub-experts per head
    are active as in a trained Monet (uncalibrated random routers activate far too many)."""
    cfg = MonetConfig(**fields, moe_decompose=decompose).validate()
    model = MonetForCausalLM(cfg).init_weights(seed).to(device=device, dtype=dtype)
    norms = [n for r in model.model.routers() for n in (r.norm1, r.norm2)]
    for n in norms:
        n.momentum = 1.0
    ids = torch.randint(0, cfg.vocab_size, (max(1, calib_tokens // 256), min(256, calib_tokens)),
                        generator=torch.Generator().manual_seed(seed + 1)).to(device)
    model.train()
    with torch.no_grad():
        model.model(ids)
    for n in norms:
        n.momentum = 0.1
    return model.eval()


def random_masks(model: MonetForCausalLM, fraction: float, seed: int = 0) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    E = model.config.moe_experts
    return {g: torch.rand(E, E, generator=gen) < fraction for g in range(model.config.num_groups)}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over `repeats` interleaved rounds (after one warm-up)."""
    best = {name: float("inf") for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


class Env:
    """Temporarily set environment variables (the kernel and sparse-path switches)."""

    def __init__(self, **values: str) -> None:
        self.values, self.saved = values, {}

    def __enter__(self) -> None:
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def figure(results: list, name: str, ratio: float, meaning: str, target: str | None = None,
           ok: bool | None = None, **extra) -> None:
    results.append(dict(name=name, ratio=round(ratio, 3), meaning=meaning, target=target, ok=ok, **extra))


# ---------------------------------------------------------------------------- CPU figures

def with_masks(model: MonetForCausalLM, masks: dict | None, fn: Callable[[], object]) -> object:
    """Run fn with `masks` installed on model, then remove them."""
    model.set_masks(masks)
    try:
        return fn()
    finally:
        model.set_masks(None)


def forward_figures(out: list, fields: dict, batch: int, seq: int, repeats: int,
                    wide: dict | None = None) -> None:
    """Ours vs the einsum baseline, and masked (2%, 15%) vs unmasked, for HD and VD; with `wide`,
    the masked overhead again at the 1.4B layer shape (where a layer costs far more per token
    while the masked pairs per token stay as few)."""
    for decompose in ("horizontal", "vertical"):
        forward_case(out, build(fields, decompose), batch, seq, repeats)
    if wide is not None:
        forward_case(out, build(wide, "vertical"), batch, seq // 2, repeats, label=" (1.4B layer shape)",
                     baseline=False)


def forward_case(out: list, model: MonetForCausalLM, batch: int, seq: int, repeats: int, label: str = "",
                 baseline: bool = True) -> None:
    tag = ("HD" if model.config.moe_decompose == "horizontal" else "VD") + label
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(2))
    fractions = (0.02, 0.15)
    fns = {}
    for frac in (None, *fractions):
        masks = None if frac is None else random_masks(model, frac, seed=int(frac * 100))
        suffix = "" if frac is None else f" masked {frac:.0%}"

        def ours(masks=masks):
            return with_masks(model, masks, lambda: model(ids).logits)

        def einsum(masks=masks):
            return with_masks(model, masks, lambda: einsum_baseline.forward(model, ids))

        fns["ours" + suffix] = ours
        if baseline:
            with torch.no_grad():  # same weights, same masks, same logits: the comparison is fair
                torch.testing.assert_close(einsum(), ours(), atol=1e-3, rtol=1e-3)
            fns["einsum" + suffix] = einsum
    with torch.no_grad():
        t = best_times(fns, repeats)
    tokens = ids.numel()
    if baseline:
        figure(out, f"{tag} forward: ours vs einsum baseline", t["einsum"] / t["ours"],
               "speed-up (tokens/s ours / tokens/s baseline)",
               ours_tokens_per_s=round(tokens / t["ours"]), baseline_tokens_per_s=round(tokens / t["einsum"]))
    for frac in fractions:
        ratio = t[f"ours masked {frac:.0%}"] / t["ours"]
        figure(out, f"{tag} masked {frac:.0%} vs unmasked", ratio, "time ratio", "<= 1.05", ratio <= 1.05)
        if baseline:
            figure(out, f"{tag} masked {frac:.0%}: ours vs einsum E*E expansion",
                   t[f"einsum masked {frac:.0%}"] / t[f"ours masked {frac:.0%}"], "speed-up")


def profile_figures(out: list, fields: dict, batch: int, seq: int, repeats: int) -> None:
    """The profile pass (routing + S GEMMs) against a plain forward of the same rows."""
    model = build(fields, "vertical")
    rows = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        t = best_times({
            "forward": lambda: model(rows),
            "hidden": lambda: model.model(rows),
            "profile": lambda: profiling.profile_rows(model, rows, batch_size=batch),
        }, repeats)
    ratio = t["profile"] / t["forward"]
    figure(out, "profile pass vs plain forward (logits)", ratio, "time ratio", "<= 1.15", ratio <= 1.15)
    figure(out, "profile pass vs forward without lm_head", t["profile"] / t["hidden"], "time ratio",
           note="the profile pass needs no logits; this isolates the statistics' cost")


def naive_figure(out: list, experts: int, heads: int, topk: int, tokens: int, repeats: int) -> None:
    """S = sum_t G(t): one GEMM vs the per-token [tokens, H, E, E] expansion (Monet README style)."""
    gen = torch.Generator().manual_seed(4)
    sigma = kernels.routing_threshold(topk, experts)
    g1, g2 = (kernels.route(torch.randn(tokens, heads, experts, generator=gen), torch.zeros(heads),
                            torch.ones(heads), sigma) for _ in range(2))

    def gemm():
        return g1.reshape(-1, experts).T @ g2.reshape(-1, experts)

    def naive(chunk=8):
        S = torch.zeros(experts, experts)
        for s in range(0, tokens, chunk):
            S += torch.einsum("thi,thj->thij", g1[s:s + chunk], g2[s:s + chunk]).sum((0, 1))
        return S

    torch.testing.assert_close(gemm(), naive(), atol=1e-4, rtol=1e-4)
    t = best_times({"gemm": gemm, "naive": naive}, repeats)
    ratio = t["naive"] / t["gemm"]
    figure(out, f"profile statistic: GEMM vs per-token E*E expansion (E={experts}, {tokens} tokens)",
           ratio, "speed-up", ">= 20", ratio >= 20)


def generate_figures(out: list, configs: dict[str, dict], prompt: int, new: int, repeats: int) -> None:
    """Batch-1 greedy generation with a KV cache: sparse (default) vs dense expert path."""
    for label, fields in configs.items():
        model = build(fields, "vertical")
        ids = torch.randint(0, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(5))

        @torch.no_grad()
        def generate(model=model, ids=ids):
            step = model(ids, use_cache=True)
            token = step.logits[:, -1:].argmax(-1)
            for _ in range(new - 1):
                step = model(token, past_key_values=step.past_key_values, use_cache=True)
                token = step.logits[:, -1:].argmax(-1)

        def dense():
            with Env(MONET_EDIT_SPARSE_TOKENS="0"):
                generate()

        t = best_times({"sparse": generate, "dense": dense}, repeats)
        figure(out, f"batch-1 generation, sparse vs dense expert path ({label})", t["dense"] / t["sparse"],
               "speed-up (tokens/s)", sparse_tokens_per_s=round(new / t["sparse"], 1),
               dense_tokens_per_s=round(new / t["dense"], 1))


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_probe(tokens: int, fields: dict, seq: int, batch: int) -> dict:
    """Run in a subprocess: profile `tokens` random tokens in streaming chunks. The RSS high-water
    mark is reset after a warm-up chunk (/proc/self/clear_refs; ru_maxrss would carry the parent's
    peak across exec), so `peak` is the peak while profiling and `growth` its excess over the start."""
    model = build(fields, "vertical")
    gen = torch.Generator().manual_seed(6)
    chunk_rows = batch * 4

    def chunk():
        return torch.randint(0, model.config.vocab_size, (chunk_rows, seq), generator=gen)

    total = profiling.profile_rows(model, chunk(), batch_size=batch)  # warm-up, allocator steady
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS")
    start = time.perf_counter()
    while total.n < tokens:
        total = total + profiling.profile_rows(model, chunk(), batch_size=batch)
    peak = _status_bytes("VmHWM")
    return dict(tokens=total.n, peak_rss_bytes=peak, growth_bytes=peak - before,
                seconds=round(time.perf_counter() - start, 1))


def memory_figures(out: list, counts: list[int], quick: bool) -> None:
    probes = []
    for tokens in counts:
        cmd = [sys.executable, __file__, "--memory-probe", str(tokens), "--threads", str(torch.get_num_threads())]
        cmd += ["--quick"] if quick else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        probes.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, last = probes[0], probes[-1]
    ratio = last["peak_rss_bytes"] / first["peak_rss_bytes"]
    figure(out, f"profiling peak RSS, {last['tokens']:,} vs {first['tokens']:,} tokens", ratio,
           "memory ratio (flat = 1.0)", "<= 1.05", ratio <= 1.05, probes=probes)


def ranks_figures(out: list, tokens: int, seq: int, sources: tuple[str, ...]) -> None:
    """`monet-edit profile` wall time on the packaged tiny model: one process with every core vs
    --nproc 2 (torchrun, gloo, one thread per rank), the same tokens of a user corpus made from
    embedded corpora; start-up (imports, rendezvous) included."""
    from monet_edit import corpora

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, MONET_EDIT_HOME=home)
        env.pop("OMP_NUM_THREADS", None)
        with Env(MONET_EDIT_HOME=home):
            texts = [d["text"] for name in sources for split in ("train", "profile", "eval")
                     for d in corpora.build(name).load(split)]
        corpus = Path(home) / "mixed.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        base = [sys.executable, "-m", "monet_edit", "profile", "--corpus", str(corpus), "--model", "tiny",
                "--tokens", str(tokens), "--seq-len", str(seq), "--shard-tokens", str(max(seq * 8, tokens // 16))]
        subprocess.run([*base, "--tokens", str(seq * 8), "--out", f"{home}/warm"], env=env, check=True,
                       capture_output=True)  # builds the corpus cache outside the timings
        walls = {}
        for label, extra in (("1", []), ("2", ["--nproc", "2"])):
            began = time.perf_counter()
            done = subprocess.run([*base, "--out", f"{home}/ranks{label}", *extra], env=env, check=True,
                                  capture_output=True, text=True)
            walls[label] = time.perf_counter() - began
        profiled = profiling_tokens(done.stderr)
    figure(out, f"profile {profiled:,} tokens: 1 rank ({cores} threads) / 2 ranks", walls["1"] / walls["2"],
           "speed-up of --nproc 2 (wall, start-up included)", wall_seconds=walls)


def profiling_tokens(log: str) -> int:
    """The token count `monet-edit profile` reported ('profile NAME: 12,345 tokens in ...')."""
    return int(log.split(": ", 1)[1].split(" tokens", 1)[0].replace(",", ""))


# ---------------------------------------------------------------------------- GPU figures

def gpu_figures(out: list, quick: bool) -> str:
    """The 1.4B shape in bf16 on CUDA: tokens/s, MFU, Triton vs torch kernels, masked overhead."""
    if not torch.cuda.is_available():
        return "skipped: no CUDA device (run `make bench` on a GPU machine for these figures)"
    fields = QUICK if quick else GPU_1_4B
    batch, seq = (2, 64) if quick else (8, 1024)
    notes = []
    for decompose in ("vertical", "horizontal"):
        tag = "HD" if decompose == "horizontal" else "VD"
        model = build(fields, decompose, device="cuda", dtype=torch.bfloat16, calib_tokens=4096)
        ids = torch.randint(0, model.config.vocab_size, (batch, seq), device="cuda")
        masks = random_masks(model, 0.02)

        def masked(model=model, ids=ids, masks=masks):
            return with_masks(model, masks, lambda: model(ids))

        def torch_path(model=model, ids=ids):
            with Env(MONET_EDIT_KERNELS="torch"):
                return model(ids)

        with torch.no_grad():
            torch.testing.assert_close(torch_path().logits.float(), model(ids).logits.float(), atol=0.1, rtol=0.05)
            t = best_times({"triton": lambda m=model, i=ids: m(i), "torch": torch_path, "masked": masked}, 5)
        tokens = ids.numel()
        flops = model_flops_per_token(model.config, seq) * tokens
        peak = peak_bf16_flops()
        figure(out, f"GPU {tag} 1.4B bf16: Triton vs torch kernels", t["torch"] / t["triton"], "speed-up",
               tokens_per_s=round(tokens / t["triton"]),
               mfu=None if peak is None else round(flops / t["triton"] / peak, 4))
        ratio = t["masked"] / t["triton"]
        figure(out, f"GPU {tag} 1.4B bf16: masked 2% vs unmasked", ratio, "time ratio", "<= 1.05", ratio <= 1.05)
        del model
        torch.cuda.empty_cache()
    notes.append(f"device: {torch.cuda.get_device_name()}")
    return "; ".join(notes)


def model_flops_per_token(cfg: MonetConfig, seq: int) -> float:
    """Forward FLOPs per token: 2 x every matmul weight (all E*m expert rows are computed densely)
    plus causal attention scores and values (2 x 2 x seq/2 x d per layer)."""
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    em = cfg.moe_experts * cfg.moe_dim
    attn = d * cfg.head_dim * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) + d * d
    routers = cfg.num_groups * 2 * d * cfg.moe_heads * cfg.moe_experts
    experts = L * 2 * d * em
    weights = L * attn + experts + routers + d * cfg.vocab_size
    return 2 * weights + L * 2 * seq * d


def peak_bf16_flops() -> float | None:
    """Dense bf16 peak of known devices (None when unknown: MFU is then not reported)."""
    name = torch.cuda.get_device_name()
    for key, peak in (("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40", 181e12)):
        if key in name:
            return peak
    return None


# ---------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "results.json")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    small = QUICK if args.quick else SMALL
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, small, seq=64 if args.quick else 256, batch=8)))
        return
    os.environ.setdefault("MONET_EDIT_KERNELS", "auto")
    started = time.perf_counter()
    mid = QUICK if args.quick else MID
    repeats = 1 if args.quick else 7
    out: list = []
    sections = [
        ("forward", lambda: forward_figures(out, mid, batch=2 if args.quick else 1, seq=32 if args.quick else 256,
                                            repeats=repeats, wide=None if args.quick else WIDE)),
        ("profile", lambda: profile_figures(out, mid, batch=2 if args.quick else 1,
                                            seq=32 if args.quick else 256, repeats=repeats)),
        ("naive", lambda: naive_figure(out, experts=32 if args.quick else 512, heads=2 if args.quick else 8,
                                       topk=2 if args.quick else 8, tokens=16 if args.quick else 64,
                                       repeats=repeats)),
        ("generate", lambda: generate_figures(
            out, {"E=16": QUICK} if args.quick else {"mid, E=128": MID, "1.4B layer shape, E=512": WIDE},
            prompt=8 if args.quick else 16, new=4 if args.quick else 32, repeats=repeats)),
        ("ranks", lambda: ranks_figures(out, tokens=4096 if args.quick else 524288, seq=32 if args.quick else 128,
                                        sources=("en",) if args.quick else ("en", "de", "fr", "es", "it", "pt",
                                                                            "python", "c", "go", "rust", "perl",
                                                                            "javascript", "law", "history"))),
        ("memory", lambda: memory_figures(out, [2048, 8192] if args.quick else [65536, 262144, 1048576],
                                          args.quick)),
    ]
    for name, section in sections:
        began = time.perf_counter()
        section()
        print(f"[bench] {name}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    gpu_note = gpu_figures(out, args.quick)
    report = dict(
        figures=out, gpu=gpu_note, seconds=round(time.perf_counter() - started, 1),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                     torch=torch.__version__, load_average=os.getloadavg()),
        configs=dict(mid=mid, small=small, wide=None if args.quick else WIDE),
        method="each ratio compares variants timed interleaved in this run on the same weights; best of "
               f"{repeats} runs each after a warm-up",
    )
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(report: dict) -> None:
    width = max(len(f["name"]) for f in report["figures"])
    print(f"{'figure':<{width}}  {'ratio':>8}  {'target':>8}  meaning")
    for f in report["figures"]:
        mark = "" if f["ok"] is None else ("  ok" if f["ok"] else "  MISSED")
        print(f"{f['name']:<{width}}  {f['ratio']:>8.3f}  {f['target'] or '':>8}  {f['meaning']}{mark}")
    print(f"GPU: {report['gpu']}")
    print(f"({report['seconds']} s; load average {report['machine']['load_average'][0]:.1f})")


if __name__ == "__main__":
    main()
