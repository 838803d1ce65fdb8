"""Peak RSS of profiling 64k / 256k / 1M tokens with streaming batches (flat = 1.0).

Each count runs in its own process (`python -m bench.memory --probe N`): the RSS high-water mark
is reset after a warm-up chunk (/proc/self/clear_refs; ru_maxrss would carry the parent's peak
across exec), so `peak` is the peak while profiling and `growth` its excess over the start.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from monet_edit import profiling

from . import common

# Cheap enough for a million tokens.
SMALL = dict(common.MID, vocab_size=1000, hidden_size=128, num_attention_heads=4, moe_dim=8)


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def probe(tokens: int, fields: dict, seq: int, batch: int) -> dict:
    model = common.build(fields, "vertical")
    gen = torch.Generator().manual_seed(6)

    def chunk():
        return torch.randint(0, model.config.vocab_size, (batch * 4, seq), generator=gen)

    total = profiling.profile_rows(model, chunk(), batch_size=batch)  # warm-up, allocator steady
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS")
    start = time.perf_counter()
    while total.n < tokens:
        total = total + profiling.profile_rows(model, chunk(), batch_size=batch)
    peak = _status_bytes("VmHWM")
    return dict(tokens=total.n, peak_rss_bytes=peak, growth_bytes=peak - before,
                seconds=round(time.perf_counter() - start, 1))


def run(counts: list[int], quick: bool) -> Iterator[dict]:
    probes = []
    for tokens in counts:
        cmd = [sys.executable, "-m", "bench.memory", "--probe", str(tokens), "--threads", str(torch.get_num_threads())]
        done = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True, check=True)
        probes.append(json.loads(done.stdout))
    first, last = probes[0], probes[-1]
    yield common.record("memory", f"profiling peak RSS, {last['tokens']:,} vs {first['tokens']:,} tokens",
                        last["peak_rss_bytes"] / first["peak_rss_bytes"], "memory ratio (flat = 1.0)", "<= 1.05",
                        probes=probes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one memory probe (run by bench.memory.run)")
    parser.add_argument("--probe", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fields = common.QUICK if args.quick else SMALL
    print(json.dumps(probe(args.probe, fields, seq=64 if args.quick else 256, batch=8)))
