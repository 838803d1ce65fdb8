"""Shared caches under concurrent use, and storage that refuses writes.

Several real processes share one MONET_EDIT_HOME and one profiles directory (as CI matrices and
users on one filesystem do); a lock held by a killed process blocks nobody; a full or read-only
disk is one line, exit 1, nothing half-written visible, and the cache still works afterwards."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clirun import assert_clean_error, cli

from monet_edit import profiling
from monet_edit.cli import main
from monet_edit.editing import verify
from monet_edit.infra import atomic, locks
from monet_edit.model import checkpoint

PROFILE = ["--tokens", "4000", "--seq-len", "32", "--batch-size", "4"]
GERMAN = ["--language", "de", *(f"--reference={r}" for r in ("en", "fr", "es", "it", "pt"))]
LAW = ["--domain", "law", "--reference", "math"]


def _start(*args: str, env: dict | None = None, preexec=None) -> subprocess.Popen:
    full = dict(os.environ, COLUMNS="200", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "monet_edit", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full, preexec_fn=preexec)


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    return [(p.wait(timeout), p.communicate()[1]) for p in procs]


def _visible(directory: Path) -> list[str]:
    """What a reader sees: the entries that are not hidden; and no temporary is left anywhere
    (hidden lock files and journals may stay: they hold no output)."""
    names = [p.name for p in directory.iterdir()]
    assert not [n for n in names if ".tmp-" in n or ".old-" in n], names
    return sorted(n for n in names if not n.startswith("."))


def _holder(target: Path, what: str = "a test holder") -> subprocess.Popen:
    """A process that holds the lock of `target` until killed; returns once it holds it."""
    code = ("import sys, time\nfrom monet_edit.infra import locks\n"
            f"with locks.hold({str(target)!r}, {what!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_concurrent_profiles_on_one_cache_all_succeed_and_agree(tiny_ckpt, tmp_path, fresh_corpora):
    """Three `profile` runs at once on a fresh cache: corpora built once, each profile computed by
    one process while the others wait for it and reuse it; same files for all."""
    out = tmp_path / "pc"
    procs = [_start("profile", *GERMAN, "--model", tiny_ckpt, *PROFILE, "--profiles-dir", out, "--json")
             for _ in range(3)]
    results = _finish(procs)
    for code, stderr in results:
        assert code == 0, stderr
        assert "internal error" not in stderr and "Traceback" not in stderr, stderr
    names = _visible(out)
    assert len(names) == 6 and all(n.endswith(".profile.safetensors") for n in names)  # de + 5 references
    fp = checkpoint.model_fingerprint(tiny_ckpt)
    for name in names:
        assert profiling.load(out / name, model_fingerprint=fp).n == 4000
    computed = sum(stderr.count(" tokens/s) -> ") for _, stderr in results)
    assert computed == 6  # each profile was computed exactly once, by one of the three
    assert _visible(fresh_corpora) == ["de", "en", "es", "fr", "it", "pt"]  # no torn or temporary builds


def test_concurrent_corpus_builds_and_resects(tiny_ckpt, tmp_path, fresh_corpora):
    """Four processes build the same corpora at once; then two resects into different outputs
    share one profiles directory."""
    procs = [_start("corpora", "build", name) for name in ("law", "law", "math", "law")]
    for code, stderr in _finish(procs):
        assert code == 0 and "built" in stderr, stderr
    assert _visible(fresh_corpora) == ["law", "math"]
    profiles = tmp_path / "profiles"
    common = ["resect", *LAW, "--model", tiny_ckpt, *PROFILE, "--profiles-dir", profiles]
    procs = [_start(*common, "--out", tmp_path / f"edited-{i}") for i in range(2)]
    for code, stderr in _finish(procs):
        assert code == 0, stderr
    for i in range(2):
        assert verify.check(tmp_path / f"edited-{i}")["problems"] == []
    assert _visible(tmp_path) == ["edited-0", "edited-1", "home", "profiles"]


def test_a_waiter_names_the_holder_and_a_killed_holder_blocks_nobody(tiny_ckpt, tmp_path):
    out = tmp_path / "pc"
    corpus = cli("corpora", "build", "law")
    assert corpus.code == 0, corpus.stderr
    # the path `profile` will write: the lock is taken on it
    probe = cli("profile", *LAW, "--model", tiny_ckpt, *PROFILE, "--out", tmp_path / "probe", "--json")
    assert probe.code == 0, probe.stderr
    name = Path(__import__("json").loads(probe.stdout)["profiles"]["law"]["path"]).name
    holder = _holder(out / name, "profiling law (test)")
    try:
        # a waiter that gives up: it says it waits, then one error line naming who holds the lock
        res = cli("profile", *LAW, "--model", tiny_ckpt, *PROFILE, "--out", out,
                  env={locks.ENV: "1"})
        assert res.code == 1 and "Traceback" not in res.stderr, res.stderr
        waiting, error = res.stderr.strip().splitlines()
        assert waiting.startswith(f"waiting for pid {holder.pid} on ") and "profiling law (test)" in waiting
        assert error.startswith("error: ") and "gave up after 1 s" in error and locks.ENV in error
        assert not (out / name).exists()
        # a waiter that waits: it says so once, then proceeds when the holder dies (SIGKILL)
        waiter = _start("profile", *LAW, "--model", tiny_ckpt, *PROFILE, "--out", out)
        first = waiter.stderr.readline()  # blocks until the waiter reaches the lock and says so
        assert first.startswith(f"waiting for pid {holder.pid} on "), first
        time.sleep(1)
        assert waiter.poll() is None  # still waiting
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    ((code, stderr),) = _finish([waiter])
    assert code == 0, stderr
    assert "waiting for" not in stderr  # said once (the first line, read above)
    assert (out / name).is_file() and (out / f".{name}.lock").is_file()  # the dead holder's lock file
    assert profiling.load(out / name).n == 4000


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_line_and_leaves_the_cache_usable(tiny_ckpt, tmp_path, fresh_corpora):
    """A file-size limit makes the kernel refuse writes mid-file (EFBIG), as a full disk would."""
    proc = _start("corpora", "build", "law", preexec=_file_size_limit(64 * 1024))
    ((code, stderr),) = _finish([proc])
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "law" in lines[0], stderr
    assert not fresh_corpora.exists() or _visible(fresh_corpora) == []
    # the corpus builds fine once the disk has room; then a profile write fails the same way
    assert cli("corpora", "build", "law").code == 0
    out = tmp_path / "pc"
    args = ["profile", *LAW, "--model", tiny_ckpt, *PROFILE, "--out", out]
    build_refs = cli(*args, "--out", tmp_path / "warm")  # builds the reference corpora first
    assert build_refs.code == 0, build_refs.stderr
    proc = _start(*args, preexec=_file_size_limit(1024))
    ((code, stderr),) = _finish([proc])
    assert code == 1 and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "File too large" in stderr
    assert not out.exists() or _visible(out) == []  # no profile, no temporary
    res = cli(*args)
    assert res.code == 0, res.stderr
    assert len(_visible(out)) == 2


def test_a_read_only_cache_is_one_line(tiny_ckpt, tmp_path, monkeypatch, capsys, fresh_corpora):
    """EROFS from the filesystem: one line, exit 1, nothing written; then the same cache works."""
    real_mkdtemp, real_mkstemp = atomic.tempfile.mkdtemp, atomic.tempfile.mkstemp

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", read_only)
    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    assert main(["corpora", "build", "law"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Read-only file system" in lines[0] and "law" in lines[0]
    monkeypatch.setattr(atomic.tempfile, "mkdtemp", real_mkdtemp)
    assert main(["corpora", "build", "law"]) == 0
    out = tmp_path / "pc"
    args = ["profile", *LAW, "--model", str(tiny_ckpt), *PROFILE, "--out", str(out)]
    assert main(args) == 1  # profiles (and their journal) are written with mkstemp
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and "Read-only file system" in lines[0]
    assert not out.exists() or _visible(out) == []
    monkeypatch.setattr(atomic.tempfile, "mkstemp", real_mkstemp)
    assert main(args) == 0
    assert (fresh_corpora / "law").is_dir() and len(_visible(out)) == 2


@pytest.mark.parametrize("value", ["soon", "-3"])
def test_a_bad_lock_timeout_is_a_usage_error(tiny_ckpt, tmp_path, value):
    res = cli("profile", *LAW, "--model", tiny_ckpt, *PROFILE, "--out", tmp_path / "p",
              env={locks.ENV: value})
    assert_clean_error(res, 2, locks.ENV)
