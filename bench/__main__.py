"""`make bench` (`python -m bench [FIGURE ...]`): speed, memory and precision figures as JSON lines.

Every figure is a ratio measured in this run between variants timed interleaved on the same
weights (best of --repeats after a warm-up), so a machine shared with other work slows both sides
alike. The first line describes the run (machine, provenance, load average), then one line per
result, then a summary line (targets met and missed); the same lines go to --out.

Figures: peak (this machine's GEMM rate), forward, profile, cost, statistic, generate,
precision, training, memory, ranks, gpu; fidelity (the baseline against the published file) with
--upstream PATH, which also makes the published file the baseline of forward and profile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from monet_edit.errors import UsageError
from monet_edit.infra import atomic, provenance

from . import common

FIGURES = ("peak", "forward", "profile", "cost", "statistic", "generate", "precision", "training", "memory", "ranks",
           "gpu")
ROOT = Path(__file__).resolve().parent


def _threads(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads {text!r}: expected counts like 1,2") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--threads {text!r}: counts must be at least 1")
    return counts


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("figures", nargs="*", metavar="FIGURE", help=f"any of {', '.join(FIGURES)}, fidelity "
                        "(default: all; fidelity only with --upstream)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (the smoke test)")
    parser.add_argument("--threads", type=_threads, default=(1, 2), help="torch CPU thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, help="timed rounds per variant (default 5, --quick 1)")
    parser.add_argument("--upstream", type=Path, help="the published modeling_monet.py, to run as the baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "results.jsonl", help="also write the lines here")
    args = parser.parse_args(argv)
    unknown = [f for f in args.figures if f not in (*FIGURES, "fidelity")]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}, fidelity")
    if "fidelity" in args.figures and args.upstream is None:
        parser.error("the fidelity figure needs --upstream PATH (the published modeling_monet.py)")
    args.figures = args.figures or [*FIGURES, *(["fidelity"] if args.upstream else [])]
    args.repeats = args.repeats or (1 if args.quick else 5)
    return args


def sections(args: argparse.Namespace) -> dict[str, Callable[[], Iterator[dict]]]:
    """Figure name -> a generator of its result lines, at the sizes --quick asks for."""
    from . import (
        cost,
        fidelity,
        forward,
        generate,
        gpu,
        memory,
        precision,
        profile,
        ranks,
        statistic,
        training,
        upstream,
    )

    quick, repeats, counts = args.quick, args.repeats, args.threads
    configs = {"quick": common.QUICK} if quick else {"mid": common.MID, "wide": common.WIDE}
    batch, seq = (2, 32) if quick else (4, 256)
    module = upstream.load_module(args.upstream) if args.upstream else None
    baseline_for = (lambda model: upstream.forward_fn(module, model)) if module else None
    peaks: dict[int, float] = {}

    def peak() -> Iterator[dict]:
        for count in counts:
            with common.threads(count):
                peaks[count] = common.gemm_peak(size=256 if quick else 2048, repeats=repeats)
            yield dict(figure="peak", name=f"fp32 GEMM rate, {count} thread(s)", gflops=round(peaks[count] / 1e9, 1),
                       threads=count)

    def forward_lines() -> Iterator[dict]:
        if not peaks:
            yield from peak()
        yield from forward.run(configs, counts, repeats, peaks, batch, seq, baseline_for)

    return {
        "peak": peak,
        "forward": forward_lines,
        "profile": lambda: profile.run(configs, counts, repeats, batch, seq, baseline_for),
        "cost": lambda: cost.run(configs, counts, repeats, tokens=batch * seq),
        "statistic": lambda: statistic.run(32 if quick else 512, 2 if quick else 8, 2 if quick else 8,
                                           16 if quick else 64, repeats),
        "generate": lambda: generate.run(configs, prompt=8 if quick else 16, new=4 if quick else 32, repeats=repeats),
        "precision": lambda: precision.run(() if quick else ("en", "de", "python", "law"), 4096,
                                           common.QUICK if quick else common.WIDE, repeats,
                                           "quick" if quick else "1.4B layer shape"),
        "training": lambda: training.run(training.QUICK_SHAPES if quick else training.SHAPES, counts, repeats,
                                         batch=2 if quick else 16, seq=16 if quick else 128),
        "memory": lambda: memory.run([2048, 8192] if quick else [65536, 262144, 1048576], quick),
        "ranks": lambda: ranks.run(4096 if quick else 524288, 32 if quick else 128,
                                   ("en",) if quick else ("en", "de", "fr", "es", "it", "pt", "python", "c", "go",
                                                          "rust", "perl", "javascript", "law", "history")),
        "gpu": lambda: gpu.run(quick, repeats),
        "fidelity": lambda: fidelity.run(module, configs, counts, repeats, batch, seq),
    }


def machine() -> dict:
    return dict(platform=platform.platform(), cpus=os.cpu_count(), torch=torch.__version__,
                cpu_capability=torch.backends.cpu.get_cpu_capability(), load_average=os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
        run = sections(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    lines = [dict(figure="run", figures=args.figures, threads=list(args.threads), repeats=args.repeats,
                  quick=args.quick, upstream=None if args.upstream is None else str(args.upstream),
                  machine=machine(), provenance=provenance.record(),
                  method="ratios of variants timed interleaved in this run on the same weights, best of "
                         f"{args.repeats} rounds after a warm-up")]
    print(json.dumps(lines[0]), flush=True)
    for name in args.figures:
        for line in run[name]():
            lines.append(line)
            print(json.dumps(line), flush=True)
    judged = [line for line in lines if line.get("ok") is not None]
    lines.append(dict(figure="summary", seconds=round(time.perf_counter() - started, 1),
                      met=sum(bool(line["ok"]) for line in judged),
                      missed=[line["name"] for line in judged if not line["ok"]], load_average=os.getloadavg()))
    print(json.dumps(lines[-1]), flush=True)
    atomic.write_text(args.out, "".join(json.dumps(line) + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
