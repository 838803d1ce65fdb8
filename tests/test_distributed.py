"""Data-parallel profile and eval under torchrun (gloo, 2 CPU ranks): the same numbers as one
process, a killed rank leaves no output, and --resume continues from the journalled shards."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from clirun import cli
from helpers import random_mask, write_tiny_checkpoint

from monet_edit import profiling
from monet_edit.cli import main
from monet_edit.errors import UsageError
from monet_edit.infra import distributed, journal
from monet_edit.model import checkpoint
from monet_edit.profiling import cache as _cache  # noqa: F401  (profiling.cache, patched below)

PROFILE = ["--tokens", "6000", "--seq-len", "32", "--batch-size", "4", "--shard-tokens", "512"]
EVAL = ["--target", "law", "--reference", "math", "--reference", "history", "--suite", "loss,mcq,toxicity", "--tokens", "600", "--seq-len", "32",
        "--batch-size", "4", "--mcq-items", "3", "--prompts", "3", "--samples", "2", "--max-new-tokens", "6"]


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _corpora_built_once(shared_home, monkeypatch):
    """One MONET_EDIT_HOME for the module: the corpora are built once, not once per test."""
    monkeypatch.setenv("MONET_EDIT_HOME", str(shared_home))


def _profiles(directory: Path) -> dict[str, profiling.Profile]:
    return {p.name: profiling.load(p) for p in sorted(directory.glob("*.profile.safetensors"))}


def _same_profile(a: profiling.Profile, b: profiling.Profile) -> None:
    """Equal up to what the ranks may legitimately change: the fp32 routing (another thread count
    per process) and the order of float64 merges; a bound of 16 fp32 ulps per token and term."""
    assert a.n == b.n and a.labelled == b.labelled
    tol = 16 * a.n * torch.finfo(torch.float32).eps
    torch.testing.assert_close(a.S, b.S, rtol=0, atol=tol)
    if a.labelled:
        torch.testing.assert_close(a.M2, b.M2, rtol=0, atol=tol)
        torch.testing.assert_close(a.C, b.C, rtol=0, atol=tol * (a.m2_y / a.n) ** 0.5)
        assert a.sum_y == pytest.approx(b.sum_y, rel=1e-12) and a.m2_y == pytest.approx(b.m2_y, rel=1e-12)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[str]:
    """A small reference corpus: the profile command profiles the target and its references (by
    default every embedded corpus); these tests are about the target's profile."""
    path = tmp_path_factory.mktemp("reference") / "other.txt"
    path.write_text("\n\n".join(f"other text {i}: the sky is blue and wide " * 8 for i in range(200)))
    return ["--reference", str(path)]


def _target(profiles: dict, name: str) -> profiling.Profile:
    (found,) = [p for stem, p in profiles.items() if stem.startswith((f"{name}-", f"user-{name}-"))]
    return found


@pytest.fixture(scope="module")
def user_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "notes.txt"
    path.write_text("\n\n".join(f"note {i}: " + f"def f(x): return x * {i} and the law of the land " * 12
                                for i in range(300)))
    return path


def test_profile_on_two_ranks_equals_one_process(tiny_ckpt, reference, tmp_path):
    """A labelled profile (S, M2, C, y statistics); the unlabelled path is checked with --resume below."""
    common = ["profile", "--toxicity", "--model", str(tiny_ckpt), *PROFILE, *reference]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    res = cli(*common, "--out", tmp_path / "two", "--nproc", "2")
    assert res.code == 0, res.stderr
    assert "on 2 ranks" in res.stderr and "Traceback" not in res.stderr
    one, two = _profiles(tmp_path / "one"), _profiles(tmp_path / "two")
    assert list(one) == list(two) and len(one) == 2  # the target and its reference
    for name in one:
        _same_profile(one[name], two[name])
    assert _target(one, "toxicity").labelled
    assert _target(one, "toxicity").n > 10 * 512  # several shards were dealt out
    # journal removed once the profile is published; only the lock file (no data) stays
    assert [p.name for p in (tmp_path / "two").glob(".*")] == [f".{name}.lock" for name in two]


@pytest.fixture(scope="module")
def edited(tmp_path_factory, tiny_ckpt) -> Path:
    """tiny_ckpt's weights with 20% of the experts masked: a real before/after difference."""
    mask = random_mask(checkpoint.load_config(tiny_ckpt), 0.2, seed=3)
    return write_tiny_checkpoint(tmp_path_factory.mktemp("edited") / "edited", masks=mask)


def _numbers(results: dict) -> dict:
    return {k: results[k] for k in ("loss", "mcq", "toxicity", "summary")}


def _close(a, b) -> None:
    """Equal, except floats may differ in the last bits (summation order over ranks)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15)
    else:
        assert a == b


@pytest.fixture(scope="module")
def one_process_eval(tiny_ckpt, edited, tmp_path_factory, shared_home, shared_corpora) -> tuple[list[str], Path]:
    """The eval command line and the results of running it in one process."""
    common = ["eval", "--model", str(edited), "--base", str(tiny_ckpt), *EVAL]
    out = tmp_path_factory.mktemp("eval") / "one"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONET_EDIT_HOME", str(shared_home))
        mp.setenv("MONET_EDIT_CORPORA", str(shared_corpora))
        assert main([*common, "--out", str(out)]) == 0
    return common, out / "results.json"


def test_eval_on_two_ranks_equals_one_process_and_repeats(one_process_eval, tmp_path):
    common, first = one_process_eval
    assert main([*common, "--out", str(tmp_path / "again")]) == 0
    # determinism: the same command twice writes the same bytes (numbers, seeds, provenance)
    assert first.read_bytes() == (tmp_path / "again" / "results.json").read_bytes()
    res = cli(*common, "--out", tmp_path / "two", "--nproc", "2", "--json")
    assert res.code == 0, res.stderr
    one = json.loads(first.read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert json.loads(res.stdout)["summary"] == two["summary"]  # one JSON document: rank 0's
    assert (one["ranks"], two["ranks"]) == (1, 2)
    assert one["target"]["references"] == ["math", "history"]  # --reference: the others' set
    assert one["summary"]["experts_masked"] > 0
    assert one["loss"]["law"]["after"]["loss"] != one["loss"]["law"]["before"]["loss"]
    _close(_numbers(one), _numbers(two))
    assert "data-parallel on 2 ranks (gloo)" in res.stderr
    assert res.stderr.count("wrote ") == 1  # rank 0 alone prints and writes


def _descendant_with_rank(root: int, rank: int) -> int | None:
    """The pid of the torchrun worker below `root` whose environment says RANK=`rank`."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    for pid in parents:
        up = pid
        while up in parents and up != root:
            up = parents[up]
        if up != root or pid == root:
            continue
        try:
            env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


def test_killed_rank_leaves_no_output_and_resume_continues(tiny_ckpt, user_corpus, reference, tmp_path):
    out = tmp_path / "two"
    args = ["profile", "--corpus", str(user_corpus), "--model", str(tiny_ckpt), "--tokens", "12000",
            "--seq-len", "32", "--batch-size", "2", "--shard-tokens", "256", *reference, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "monet_edit", *args, "--nproc", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    shards: list[Path] = []
    while time.monotonic() < deadline and len(shards) < 3:
        time.sleep(0.2)
        shards = [p for d in out.glob(".*.partial") for p in d.glob("shard-*.safetensors")]
    victim = _descendant_with_rank(proc.pid, 1)
    assert victim is not None and len(shards) >= 3, "the job did not get going"
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "rank 1 was killed by SIGKILL" in stderr and "no output was written" in stderr
    assert "Traceback" not in stderr
    assert not list(out.glob("*.profile.safetensors"))  # nothing that looks like a profile
    kept = [p for d in out.glob(".*.partial") for p in d.glob("shard-*.safetensors")]
    assert len(kept) >= 3

    res = cli(*args, "--nproc", "2", "--resume")
    assert res.code == 0, res.stderr
    assert f"resuming: {len(kept)} completed part(s) kept" in res.stderr
    assert main([*args[:-1], str(tmp_path / "one")]) == 0  # uninterrupted, one process
    _same_profile(_target(_profiles(out), "notes"), _target(_profiles(tmp_path / "one"), "notes"))


def test_eval_resume_keeps_finished_suites(one_process_eval, tmp_path, capsys):
    """A crash after the base model's suites: --resume reuses them, the numbers are unchanged."""
    common, first = one_process_eval
    out = tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-m", "monet_edit", *common, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = journal.location(out) / "before-toxicity.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not part.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert part.exists() and not out.exists()
    capsys.readouterr()
    assert main([*common, "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming: " in err and "kept from the interrupted run" in err
    assert not journal.location(out).exists()
    whole = json.loads(first.read_text())
    resumed = json.loads((out / "results.json").read_text())
    assert _numbers(whole) == _numbers(resumed)


def test_resume_ignores_parts_of_another_job(tmp_path):
    group = distributed.Group()
    out = tmp_path / "x.profile.safetensors"
    j = journal.Journal(out, {"tokens": 1}, group, resume=False)
    j.write("shard-00000.safetensors", b"data")
    assert journal.Journal(out, {"tokens": 1}, group, resume=True).has("shard-00000.safetensors")
    other = journal.Journal(out, {"tokens": 2}, group, resume=True)
    assert not other.has("shard-00000.safetensors") and "different job" in other.note
    fresh = journal.Journal(out, {"tokens": 2}, group, resume=False)
    assert fresh.kept == [] and not fresh.path("shard-00000.safetensors").exists()
    fresh.finish()
    assert not journal.location(out).exists()


@pytest.mark.parametrize("count,batch,world", [(10, 3, 2), (7, 1, 3), (4, 8, 2), (0, 2, 2)])
def test_ranks_take_whole_batches_that_cover_everything_once(count, batch, world):
    shares = [distributed.Group(rank, world).take(count, batch) for rank in range(world)]
    assert sorted(i for s in shares for i in s) == list(range(count))
    batches = [list(range(b * batch, min(count, (b + 1) * batch))) for b in range(-(-count // batch))]
    for rank, share in enumerate(shares):  # batch b, whole, on rank b % world
        assert share == [i for b, items in enumerate(batches) if b % world == rank for i in items]


def test_nproc_must_match_the_torchrun_job(tiny_ckpt, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    code = main(["profile", "--toxicity", "--model", str(tiny_ckpt), "--nproc", "2"])
    assert code == 2
    assert "--nproc 2 but torchrun started 3 ranks" in capsys.readouterr().err


def test_nproc_zero_is_a_usage_error(capsys):
    assert main(["profile", "--toxicity", "--nproc", "0"]) == 2
    assert "--nproc must be at least 1" in capsys.readouterr().err


def test_more_ranks_than_gpus_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match="rank 1 needs GPU 1 but this machine has 1"):
        distributed.init("cuda")
    assert distributed.group().world == 1  # nothing was joined


def test_resume_with_a_damaged_shard_is_one_line(tiny_ckpt, user_corpus, reference, tmp_path, monkeypatch,
                                                 capsys):
    args = ["profile", "--corpus", str(user_corpus), "--model", str(tiny_ckpt), "--tokens", "3000",
            "--seq-len", "32", "--shard-tokens", "256", *reference, "--out", str(tmp_path)]

    def crash(*_a, **_k):
        raise KeyboardInterrupt  # stopped after every shard was journalled, before the profile is published

    with monkeypatch.context() as m:
        m.setattr(profiling.cache, "save", crash)
        assert main(args) == 130
    (partial,) = tmp_path.glob(".*.partial")
    shard = partial / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "shard-00001.safetensors" in errors[0], err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("*.profile.safetensors"))


def test_a_failed_gate_on_two_ranks_exits_3(tiny_ckpt, edited, tmp_path):
    res = cli("eval", "--model", edited, "--base", tiny_ckpt, "--target", "law", "--reference", "math", "--suite", "loss", "--tokens", "300",
              "--seq-len", "32", "--gate", "experts_masked<=0", "--out", tmp_path / "gated", "--nproc", "2")
    assert res.code == 3, res.stderr
    assert res.stderr.count("gate failed: experts_masked<=0") == 1, res.stderr  # rank 0's verdict, once
    assert "Traceback" not in res.stderr and "exitcode" not in res.stderr
    assert (tmp_path / "gated" / "results.json").is_file()  # results are written, then the gate fails


def test_bad_input_under_bare_torchrun_is_reported_once(tiny_ckpt):
    """Validation runs on rank 0 and its error is shared: one error line, not one per rank."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "monet_edit", "profile", "--domain", "astrology", "--model", str(tiny_ckpt)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "astrology" in errors[0], proc.stderr


def test_a_gate_failure_on_rank_0_is_exit_3_even_when_the_launcher_stops_the_others():
    """Rank 0 exits 3 after its verdict; a rank still running is then stopped by the launcher with
    a signal. That is a failed gate (3), not a crash; a rank that died first, or failed on its own, is."""
    import signal
    from types import SimpleNamespace

    from monet_edit.errors import MonetEditError
    from monet_edit.infra.distributed import _report_failure

    def failed(**ranks):
        failures = {int(r[1:]): SimpleNamespace(exitcode=code, timestamp=at, local_rank=int(r[1:]))
                    for r, (code, at) in ranks.items()}
        first = min(failures.items(), key=lambda kv: kv[1].timestamp)
        return SimpleNamespace(failures=failures, get_first_failure=lambda: first)

    term = -int(signal.SIGTERM)
    assert _report_failure(failed(r0=(3, 100))) == 3
    assert _report_failure(failed(r0=(3, 100), r1=(term, 101))) == 3
    assert _report_failure(failed(r0=(3, 100), r1=(3, 100))) == 3
    with pytest.raises(MonetEditError, match="rank 1 was killed by SIGKILL"):
        _report_failure(failed(r0=(3, 100), r1=(-int(signal.SIGKILL), 99)))  # died before rank 0's verdict
    with pytest.raises(MonetEditError, match="rank 1 exited with code 1"):
        _report_failure(failed(r0=(3, 101), r1=(1, 100)))
