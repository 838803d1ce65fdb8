"""Run untrusted Python programs (generated code, tests from a user's file) in a sandbox.

Each program gets its own bubblewrap (`bwrap`) sandbox: new user, pid, network, ipc, uts and
cgroup namespaces, so it has no network (only a loopback of its own) and sees no host process; a
filesystem of a read-only /usr, a fresh /proc and /dev and a size-limited tmpfs working directory
(no home, no /etc, no host /tmp; everything else read-only); an environment of PATH, HOME and LANG
only; no nested user namespaces. As root the sandbox starts as the unprivileged `nobody`: root is
exempt from RLIMIT_NPROC, and file permissions stop nothing for root.

Inside, a trusted runner is pid 1. It forks the program, which sets its resource limits (CPU
seconds, address space, file size, processes, open files, no core dumps; the hard limits equal the
soft ones) and executes the code; RLIMIT_NPROC then counts the sandbox's own processes only. The
runner reaps everything and exits with the program; the kernel kills whatever is left in the pid
namespace before bwrap can reap the runner, so once bwrap has exited nothing of the program runs.
At the wall-clock limit the parent kills the runner (bwrap names it on --info-fd), then bwrap's
process group.

Without a working bwrap `Sandbox` refuses to start unless `unsafe=True`; then programs run with the
same limits, environment and temporary directory but can reach the network and read whatever the
user (nobody, as root) can, and a child that starts its own session survives the kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UsageError

NOBODY = 65534
WORKDIR = "/sandbox"  # the program's working directory inside the sandbox
SYSTEM_PYTHON = Path("/usr/bin/python3")
KILL_WAIT = 10.0  # seconds a killed sandbox may take to disappear
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
SIGNAL_NUMBERS = frozenset(int(s) for s in signal.Signals)
LIMIT_SIGNALS = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit"}

# Trusted: reads the program from stdin and forks it with the limits set; as pid 1 of the sandbox
# it reaps every child. It exits 0 only when the program ran to its end (so an early sys.exit(0),
# exit() or os._exit(0) fails), else with the program's status (128 + n for a death by signal n).
RUNNER = """\
import os, resource as r, sys
DONE = 86
limits = [int(v) for v in sys.argv[1:6]]
src = sys.stdin.read()
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
program = os.fork()
if program:
    while True:
        pid, status = os.wait()
        if pid == program:
            code = os.waitstatus_to_exitcode(status)
            if code == 0:
                sys.stderr.write("exited with status 0 before the end of the program\\n")
            os._exit(0 if code == DONE else 1 if code == 0 else code if code > 0 else 128 - code)
cpu, mem, fsize, nproc, nofile = limits
for res, soft, hard in ((r.RLIMIT_CPU, cpu, cpu + 1), (r.RLIMIT_AS, mem, mem), (r.RLIMIT_FSIZE, fsize, fsize),
                        (r.RLIMIT_NPROC, nproc, nproc), (r.RLIMIT_NOFILE, nofile, nofile), (r.RLIMIT_CORE, 0, 0)):
    r.setrlimit(res, (soft, hard))
sys.argv = ["main.py"]
sys.stdout.reconfigure(line_buffering=True)  # stdout and stderr share a file: keep their order
exec(compile(src, "main.py", "exec"), {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
sys.stdout.flush()
sys.stderr.flush()
os._exit(DONE)
"""

# Must print "isolated": only a loopback interface and no route out, its own pid namespace, not root.
PROBE = """\
import errno, os, socket
assert [name for _, name in socket.if_nameindex()] == ["lo"], socket.if_nameindex()
s = socket.socket()
try:
    s.connect(("192.0.2.1", 9))
except OSError as e:
    assert e.errno == errno.ENETUNREACH, e
else:
    raise SystemExit("network reachable")
assert os.getpid() < 10 and os.getuid() != 0, (os.getpid(), os.getuid())
print("isolated")
"""


@dataclass(frozen=True)
class Limits:
    """Per-program limits. Memory is address space per process, so a program holds at most
    `processes` x `memory_bytes`; `file_bytes` caps each file and the whole working directory."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    processes: int = 32
    open_files: int = 64
    output_bytes: int = 4096  # of stdout + stderr kept (the tail)

    def check(self) -> None:
        for key, value in asdict(self).items():
            if not value > 0:
                raise UsageError(f"sandbox limit {key} must be positive, got {value}")


@dataclass(frozen=True)
class Outcome:
    """status: passed (exit 0 in time), failed (non-zero exit, or killed by a limit's signal:
    returncode -n) or timeout (wall clock; returncode None). output: the tail of stdout + stderr."""

    status: str
    returncode: int | None
    seconds: float
    output: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def reason(self) -> str:
        """One line: the last line of the output, or what stopped the program."""
        if self.status == "timeout":
            return "timed out"
        lines = [ln for ln in self.output.splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()[:200]
        if self.returncode is not None and self.returncode < 0:
            sig = signal.Signals(-self.returncode)
            return f"killed by {sig.name}" + (f" ({LIMIT_SIGNALS[sig]})" if sig in LIMIT_SIGNALS else "")
        return f"exit {self.returncode}"


def bwrap_version(bwrap: str) -> str | None:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10, env={})
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.startswith("bubblewrap") else None


def _interpreter() -> tuple[Path, list[Path]]:
    """The Python that runs programs and what it needs besides /usr (mounted read-only): the
    system's python3 when there is one (then nothing from a home directory is mounted), else ours."""
    if SYSTEM_PYTHON.exists():
        return SYSTEM_PYTHON, []
    prefix = Path(sys.base_prefix).resolve()
    return Path(sys.executable).resolve(), [] if prefix.is_relative_to("/usr") else [prefix]


def _mounts(extra: list[Path], limits: Limits) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = Path("/") / name
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    for path in extra:
        args += ["--ro-bind", str(path), str(path)]
    return [*args, "--proc", "/proc", "--dev", "/dev", "--size", str(limits.file_bytes), "--tmpfs", WORKDIR,
            "--remount-ro", "/dev", "--remount-ro", "/"]


class Sandbox:
    """Runs programs under `limits`. Construction checks that the isolation holds (PROBE must
    pass inside) and raises UsageError, naming --unsafe-exec, when it does not."""

    def __init__(self, limits: Limits | None = None, *, unsafe: bool = False, bwrap: str | None = None) -> None:
        self.limits = limits or Limits()
        self.limits.check()
        self.python, extra = _interpreter()
        self.drop_root = os.geteuid() == 0
        found = bwrap or shutil.which("bwrap")
        self.version = bwrap_version(found) if found else None
        self.isolated = self.version is not None
        if self.isolated:
            self._prefix = [found, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                            "--new-session", "--as-pid-1", "--clearenv", *_mounts(extra, self.limits),
                            "--chdir", WORKDIR,
                            *(a for k, v in {**ENV, "HOME": WORKDIR}.items() for a in ("--setenv", k, v))]
            problem = self._probe()
            if problem is None:
                return
            if not unsafe:
                raise UsageError(f"no sandbox for untrusted code: bwrap cannot isolate a program here "
                                 f"({problem}); pass --unsafe-exec to run it without isolation")
            self.isolated = False
        elif not unsafe:
            raise UsageError("no sandbox for untrusted code: bwrap (bubblewrap) is not installed "
                             "(apt-get install bubblewrap); pass --unsafe-exec to run it without isolation")
        self._prefix = []
        problem = self._probe("print('isolated')\n")  # not isolated, but it must run at all
        if problem is not None:
            raise UsageError(f"cannot run programs with {self.python} even without a sandbox ({problem})")

    def describe(self) -> dict:
        """What isolated the programs, for the results' record."""
        version = subprocess.run([str(self.python), "-c", "import sys; print(sys.version.split()[0])"],
                                 capture_output=True, text=True, timeout=30, env=ENV).stdout.strip()
        return {"isolation": f"{self.version}: user, pid, network, ipc, uts, cgroup namespaces" if self.isolated
                else "NONE (--unsafe-exec): limits, clean environment and temporary directory only",
                "user": "nobody" if self.drop_root else "invoking user", "python": f"{self.python} {version}",
                "limits": asdict(self.limits)}

    def _probe(self, program: str = PROBE) -> str | None:
        """None when `program` runs and prints "isolated" last, else what went wrong."""
        try:
            out = self.run(program)
        except OSError as exc:  # bwrap not executable (by nobody)
            return str(exc)
        return None if out.passed and out.output.strip().endswith("isolated") else out.reason()

    def command(self, info_fd: int | None = None) -> list[str]:
        limits = self.limits
        info = ["--info-fd", str(info_fd)] if info_fd is not None else []
        return [*self._prefix[:1], *info, *self._prefix[1:], *(["--"] if self._prefix else []), str(self.python),
                "-I", "-c", RUNNER, str(limits.cpu_seconds), str(limits.memory_bytes), str(limits.file_bytes),
                str(limits.processes), str(limits.open_files)]

    def run(self, program: str) -> Outcome:
        """Run one program to completion or to its wall-clock limit; when this returns no process
        of it is left (isolated), and its files are gone (a tmpfs, or the unsafe mode's directory)."""
        with contextlib.ExitStack() as stack:
            stdin = stack.enter_context(tempfile.TemporaryFile())
            output = stack.enter_context(tempfile.TemporaryFile())
            stdin.write(program.encode("utf-8", "surrogateescape"))
            stdin.seek(0)
            cwd = info = info_w = None
            if self.isolated:  # bwrap writes the host pid of the sandbox's pid 1 here
                info, info_w = os.pipe()
                stack.callback(os.close, info)
            else:
                cwd = stack.enter_context(tempfile.TemporaryDirectory(prefix="monet-edit-run-"))
                if self.drop_root:
                    os.chown(cwd, NOBODY, NOBODY)
            started = time.monotonic()
            deadline = started + self.limits.wall_seconds
            try:
                proc = subprocess.Popen(self.command(info_w), stdin=stdin, stdout=output, stderr=subprocess.STDOUT,
                                        cwd=cwd, env=dict(ENV, HOME=cwd) if cwd else {},
                                        pass_fds=() if info_w is None else (info_w,), start_new_session=True,
                                        **({"user": NOBODY, "group": NOBODY, "extra_groups": []}
                                           if self.drop_root else {}))
            finally:
                if info_w is not None:
                    os.close(info_w)
            finished = _stop(proc, info, deadline)
            seconds = time.monotonic() - started
            code = proc.returncode if finished else None
            if self.isolated and code is not None and code > 128 and code - 128 in SIGNAL_NUMBERS:
                code = 128 - code  # the runner reports a death by signal n as 128 + n; subprocess says -n
            size = output.seek(0, os.SEEK_END)
            output.seek(max(0, size - self.limits.output_bytes))
            text = output.read().decode("utf-8", "replace")
        return Outcome("timeout" if not finished else "passed" if code == 0 else "failed", code, seconds, text)

    def run_many(self, programs: Sequence[str], workers: int = 1,
                 progress: Callable[[int], None] = lambda _: None) -> list[Outcome]:
        """Outcomes in the order of `programs`, `workers` sandboxes at a time."""
        out: list[Outcome] = []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for outcome in pool.map(self.run, programs):
                out.append(outcome)
                progress(len(out))
        return out


def _stop(proc: subprocess.Popen, info: int | None, deadline: float) -> bool:
    """Wait for `proc` until `deadline`; kill what is left; reap. True when it exited in time."""
    runner = None
    try:
        if info is not None:
            runner = _runner_pidfd(info, proc.pid, deadline)
        with _pidfd(proc.pid) as fd:
            finished = _readable(fd, deadline - time.monotonic())
            if not finished and runner is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(runner, signal.SIGKILL)
                _readable(fd, KILL_WAIT)  # bwrap exits once it has reaped the runner (the namespace is empty)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # proc is not reaped yet, so its pid still names its group
        proc.wait()
        if runner is not None and not _readable(runner, KILL_WAIT):
            raise RuntimeError(f"sandbox of bwrap pid {proc.pid}: its pid 1 outlived SIGKILL for {KILL_WAIT} s")
        return finished
    finally:
        if runner is not None:
            os.close(runner)


@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[int]:
    fd = os.pidfd_open(pid)
    try:
        yield fd
    finally:
        os.close(fd)


def _readable(fd: int, timeout: float) -> bool:
    """True when `fd` is readable within `timeout` seconds (a pidfd: its process has exited)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def _runner_pidfd(info: int, bwrap: int, deadline: float) -> int | None:
    """A pidfd of the sandbox's pid 1, from bwrap's --info-fd JSON; None when bwrap ended first
    (it reaps the runner before it exits, so while bwrap runs the pid is still the runner's)."""
    data = b""
    while _readable(info, deadline - time.monotonic()):
        chunk = os.read(info, 4096)
        if not chunk:
            return None
        data += chunk
        try:
            pid = int(json.loads(data)["child-pid"])
        except ValueError:
            continue  # not all of it yet
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        with _pidfd(bwrap) as bwrap_fd:
            if _readable(bwrap_fd, 0):
                os.close(fd)
                return None
        return fd
    return None
