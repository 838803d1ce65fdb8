"""kill -9 at random points of resect, profile and train: nothing that looks complete is left
half-written, the base is untouched, and re-running succeeds (train resumes)."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import random_mask, random_model, tiny_config, write_checkpoint, write_tokenizer
from test_train import write_recipe

from monet_edit import profiling
from monet_edit.editing import verify
from monet_edit.model import masks

KILLS = 3


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def _run(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "monet_edit", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def _kill_at(args, fraction: float, full: float) -> None:
    proc = _run(args)
    time.sleep(full * fraction)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _timed(args) -> float:
    start = time.perf_counter()
    proc = _run(args)
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def bigger_base(tmp_path_factory):
    """A base large enough (about 30 MB) that writing its copy takes measurable time."""
    path = tmp_path_factory.mktemp("base") / "base"
    vocab = write_tokenizer(path)
    cfg = tiny_config(vocab_size=vocab, hidden_size=256, moe_experts=64, moe_dim=8, num_attention_heads=4,
                      bos_token_id=1, eos_token_id=2)
    write_checkpoint(random_model(cfg), path)
    return path, cfg


def test_kill_during_resect(bigger_base, tmp_path):
    base, cfg = bigger_base
    before = _tree_hash(base)
    mask_file = masks.save(tmp_path / "m.safetensors", random_mask(cfg, 0.1), cfg, {"rule": "test"})
    out = tmp_path / "edited"
    args = ["resect", "--mask", mask_file, "--model", base, "--out", out, "--force"]
    full = _timed(args)
    rng = random.Random(0)
    for _ in range(KILLS):
        _kill_at(args, rng.uniform(0.5, 0.98), full)
        # whatever survived is either absent or complete and intact
        if out.exists():
            assert verify.check(out)["problems"] == []
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("edited") and p != out]
        assert _tree_hash(base) == before
    assert _timed(args) > 0 and verify.check(out)["problems"] == []


def test_kill_during_profile(tiny_ckpt, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"document {i}: " + "the quick brown fox jumps " * 30 for i in range(300)))
    other = tmp_path / "other.txt"  # a small reference (by default every embedded corpus is one)
    other.write_text("\n\n".join(f"other {i}: the sky is blue and wide " * 8 for i in range(200)))
    out = tmp_path / "profiles"
    args = ["profile", "--corpus", corpus, "--reference", other, "--model", tiny_ckpt, "--out", out,
            "--tokens", "20000", "--seq-len", "32", "--shard-tokens", "2048"]
    full = _timed(args)
    (whole,) = out.glob("user-corpus-*.safetensors")
    uninterrupted = whole.read_bytes()
    whole.unlink()
    rng = random.Random(1)
    for _ in range(KILLS):
        _kill_at(args, rng.uniform(0.5, 0.98), full)
        for f in out.glob("*.safetensors"):  # a visible profile file is always a whole one
            assert profiling.load(f).n > 0
    kept, published = list(out.glob(".*.partial/shard-*")), whole.exists()
    proc = _run([*args, "--resume"])
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    if not published:  # the last kill came first: the run continues from the journalled shards
        assert f"resuming: {len(kept)} completed part(s)" in err.decode()
    assert whole.read_bytes() == uninterrupted  # resumed or not: the same bytes


def test_kill_during_train_then_resume(tmp_path):
    recipe = write_recipe(tmp_path)
    args = ["train", recipe]
    rng = random.Random(2)
    proc = _run(args)
    time.sleep(rng.uniform(4.0, 8.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists() or (tmp_path / "out" / "model.safetensors").is_file()
    assert _timed([*args, "--resume", "--force"]) > 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (tmp_path / "out" / name).is_file()
