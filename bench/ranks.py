"""`monet-edit profile` wall time on the packaged tiny model: one process with every core vs
--nproc 2 (torchrun, gloo, one thread per rank), the same tokens of a user corpus made from
embedded corpora; start-up (imports, rendezvous) included. Reads the CLI's --json output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from . import common


def run(tokens: int, seq: int, sources: tuple[str, ...]) -> Iterator[dict]:
    from monet_edit import corpora

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, MONET_EDIT_HOME=home)
        env.pop("OMP_NUM_THREADS", None)
        with common.env(MONET_EDIT_HOME=home):
            texts = [d["text"] for name in sources for split in ("train", "profile", "eval")
                     for d in corpora.build(name).load(split)]
        corpus = Path(home) / "mixed.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        base = [sys.executable, "-m", "monet_edit", "profile", "--corpus", str(corpus), "--model", "tiny",
                "--tokens", str(tokens), "--seq-len", str(seq), "--shard-tokens", str(max(seq * 8, tokens // 16)),
                "--json"]
        subprocess.run([*base, "--tokens", str(seq * 8), "--out", f"{home}/warm"], env=env, check=True,
                       capture_output=True)  # builds the corpus cache outside the timings
        walls, profiled = {}, {}
        for label, extra in (("1", []), ("2", ["--nproc", "2"])):
            began = time.perf_counter()
            done = subprocess.run([*base, "--out", f"{home}/ranks{label}", *extra], env=env, check=True,
                                  capture_output=True, text=True)
            walls[label] = time.perf_counter() - began
            out = json.loads(done.stdout)
            profiled[label] = out["profiles"][out["target"]]["tokens"]
    if profiled["1"] != profiled["2"]:
        raise RuntimeError(f"1 rank profiled {profiled['1']} tokens, 2 ranks {profiled['2']}")
    yield common.record("ranks", f"profile {profiled['1']:,} tokens: 1 rank ({cores} threads) / 2 ranks",
                        walls["1"] / walls["2"], "speed-up of --nproc 2 (wall, start-up included)",
                        wall_seconds={k: round(v, 2) for k, v in walls.items()})
