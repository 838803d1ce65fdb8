"""The sandbox for untrusted code: each attack fails, and leaves no process, file or connection."""

from __future__ import annotations

import ast
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from monet_edit.errors import UsageError
from monet_edit.evaluation.sandbox import ENV, Limits, Sandbox

FAST = Limits(wall_seconds=3, cpu_seconds=1, memory_bytes=256 << 20, file_bytes=1 << 20, processes=16)


@pytest.fixture(scope="module")
def box() -> Sandbox:
    sandbox = Sandbox(FAST)  # fails (no skip) where bwrap is missing: make install provides it
    assert sandbox.isolated
    return sandbox


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker` (seen from outside every namespace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_a_plain_program_passes_and_a_failing_one_fails(box):
    ok = box.run("assert sum(range(10)) == 45\nprint('done')\n")
    assert ok.passed and ok.output.strip() == "done" and ok.returncode == 0
    bad = box.run("assert 1 == 2, 'wrong'\n")
    assert bad.status == "failed" and bad.reason() == "AssertionError: wrong"


@pytest.mark.parametrize("leave", ["import sys\nsys.exit(0)", "exit()", "quit()", "import os\nos._exit(0)",
                                   "raise SystemExit", "def f():\n    exit(0)\nf()"])
def test_leaving_before_the_end_fails_even_with_status_0(box, leave):
    out = box.run(f"{leave}\nprint('end reached')\n")
    assert out.status == "failed" and "before the end" in out.reason(), out
    assert "end reached" not in out.output


def test_infinite_loop_hits_the_cpu_limit(box):
    out = box.run("while True:\n    pass\n")
    assert out.status == "failed" and "SIGXCPU" in out.reason(), out
    assert out.seconds < FAST.wall_seconds


def test_sleeping_forever_hits_the_wall_clock_and_its_daemon_dies(box):
    mark = f"1{uuid.uuid4().int % 10**9}.5"  # sleep's argument: a duration nobody else uses
    program = ("import subprocess, time\n"
               f"subprocess.Popen(['sleep', '{mark}'], start_new_session=True)\n"
               "time.sleep(1000)\n")
    out = box.run(program)
    assert out.status == "timeout" and out.returncode is None
    assert FAST.wall_seconds <= out.seconds < FAST.wall_seconds + 3
    assert processes_with(mark) == []


def test_a_daemon_left_behind_by_a_passing_program_dies(box):
    mark = f"2{uuid.uuid4().int % 10**9}.5"
    program = ("import os\n"
               "if os.fork() == 0:\n"
               "    os.setsid()\n"
               f"    os.execv('/usr/bin/sleep', ['sleep', '{mark}'])\n"
               "print('parent leaves')\n")
    out = box.run(program)
    assert out.passed, out
    assert processes_with(mark) == []


def test_fork_bomb_is_stopped_by_the_process_limit(box):
    mark = f"3{uuid.uuid4().int % 10**9}.5"
    program = ("import os\n"
               "n = 0\n"
               "while True:\n"
               "    if os.fork() == 0:\n"
               f"        os.execv('/usr/bin/sleep', ['sleep', '{mark}'])\n"
               "    n += 1\n"
               "    if n > 10000:\n"
               "        raise SystemExit('no process limit')\n")
    out = box.run(program)
    assert out.status == "failed" and "BlockingIOError" in out.reason(), out
    assert out.seconds < FAST.wall_seconds  # stopped by the limit, not by the clock
    assert processes_with(mark) == []


def test_recursive_fork_bomb_fails_fast(box):
    out = box.run("import os\nwhile True:\n    os.fork()\n")
    assert out.status == "failed" and out.seconds < FAST.wall_seconds, out
    assert "Resource temporarily unavailable" in out.output


def test_unbounded_allocation_hits_the_memory_limit(box):
    out = box.run("x = []\nwhile True:\n    x.append(bytearray(10 << 20))\n")
    assert out.status == "failed" and out.reason() == "MemoryError", out


def test_filling_the_working_directory_hits_the_file_size_limit(box):
    out = box.run("with open('big', 'wb') as f:\n    f.write(b'x' * (8 << 20))\n")
    assert out.status == "failed" and "File too large" in out.output, out


def test_writes_outside_the_working_directory_fail_and_leave_nothing(box, tmp_path):
    host_tmp = Path(tempfile.gettempdir()) / f"sandbox-{uuid.uuid4().hex}"
    for target, on_host in ((tmp_path / "written", tmp_path / "written"), (host_tmp, host_tmp),
                            ("/usr/lib/monet-edit-test", Path("/usr/lib/monet-edit-test")),
                            ("/etc/monet-edit-test", Path("/etc/monet-edit-test")),
                            ("../escaped", Path("/escaped")), ("/dev/shm/escaped", Path("/dev/shm/escaped"))):
        out = box.run(f"open({str(target)!r}, 'w').write('pwned')\n")
        assert out.status == "failed" and ("Read-only file system" in out.output
                                           or "No such file or directory" in out.output), (target, out)
        assert not on_host.exists()


def test_the_working_directory_is_fresh_each_time(box):
    first = box.run("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd(), os.listdir('.'))\n")
    assert first.passed and "['left.txt']" in first.output
    second = box.run("import os\nassert os.listdir('.') == [], os.listdir('.')\n")
    assert second.passed, second


def test_sockets_reach_nothing(box):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        server.setblocking(False)
        local = box.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
        assert local.status == "failed" and "Connection refused" in local.output, local
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing arrived at the host's listener
    outside = box.run("import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=2)\n")
    assert outside.status == "failed" and "Network is unreachable" in outside.output, outside
    dns = box.run("import socket\nsocket.getaddrinfo('pypi.org', 443)\n")
    assert dns.status == "failed" and "gaierror" in dns.output, dns


def test_the_home_directory_and_host_files_are_invisible(box, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    home = Path.home()
    for program in (f"print(open({str(secret)!r}).read())\n",
                    f"import os\nprint(os.listdir({str(home)!r}))\n",
                    "import os\nprint(open(os.path.expanduser('~/.bashrc')).read())\n",
                    "print(open('/etc/passwd').read())\n"):
        out = box.run(program)
        assert out.status == "failed" and "No such file or directory" in out.output, (program, out)
        assert "password" not in out.output


def test_no_secret_reaches_the_environment(box, monkeypatch):
    monkeypatch.setenv("MONET_EDIT_TEST_SECRET", "hunter2")
    out = box.run("import os\nprint(sorted(os.environ))\nassert os.environ['MONET_EDIT_TEST_SECRET']\n")
    assert out.status == "failed" and "KeyError" in out.reason()
    assert "hunter2" not in out.output
    assert sorted(set(ENV) | {"HOME", "PWD"}) == ast.literal_eval(out.output.splitlines()[0])


def test_the_program_is_not_root_and_cannot_raise_its_limits(box):
    out = box.run("import os, resource\n"
                  "assert os.getuid() != 0\n"
                  "resource.setrlimit(resource.RLIMIT_NPROC, (10**6, 10**6))\n")
    assert out.status == "failed" and "ValueError" in out.reason(), out


def test_many_programs_in_parallel_keep_their_order(box):
    outs = box.run_many([f"print({i})\nassert {i} % 3\n" for i in range(9)], workers=3)
    assert [o.output.splitlines()[0] for o in outs] == [str(i) for i in range(9)]
    assert [o.passed for o in outs] == [bool(i % 3) for i in range(9)]


def test_without_bwrap_it_refuses_unless_unsafe(tmp_path):
    with pytest.raises(UsageError, match="bubblewrap.*--unsafe-exec"):
        Sandbox(FAST, bwrap=str(tmp_path / "no-bwrap"))
    fake = Path(tempfile.mkdtemp()) / "bwrap"  # says it is bwrap but runs the program unisolated
    fake.parent.chmod(0o755)  # reachable by nobody
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo bubblewrap 0.8.0; exit 0; }\n"
                    "while [ \"$1\" != -- ]; do shift; done; shift; exec \"$@\"\n")
    fake.chmod(0o755)
    with pytest.raises(UsageError, match="cannot isolate.*--unsafe-exec"):
        Sandbox(FAST, bwrap=str(fake))
    shutil.rmtree(fake.parent)


def test_unsafe_mode_still_applies_limits_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv("MONET_EDIT_TEST_SECRET", "hunter2")
    before = set(Path(tempfile.gettempdir()).glob("monet-edit-run-*"))
    box = Sandbox(FAST, unsafe=True, bwrap=str(tmp_path / "no-bwrap"))
    assert not box.isolated and "NONE" in box.describe()["isolation"]
    assert box.run("x = []\nwhile True:\n    x.append(bytearray(10 << 20))\n").reason() == "MemoryError"
    env = box.run("import os\nprint('MONET_EDIT_TEST_SECRET' in os.environ)\n")
    assert env.passed and env.output.strip() == "False"
    mark = f"4{uuid.uuid4().int % 10**9}.5"
    out = box.run(f"import subprocess, time\nsubprocess.Popen(['sleep', '{mark}'])\ntime.sleep(1000)\n")
    assert out.status == "timeout", out
    for _ in range(40):  # killed before run() returned, but without a pid namespace nobody waits for the death
        if not processes_with(mark):
            break
        time.sleep(0.05)
    assert processes_with(mark) == []
    assert set(Path(tempfile.gettempdir()).glob("monet-edit-run-*")) == before
    assert os.environ["MONET_EDIT_TEST_SECRET"] == "hunter2"
