"""Locks for shared caches: several processes (CI matrices, users on one filesystem, GPU jobs)
may build the same corpus or profile at once; the first computes it, the others wait and reuse it.

A lock is an OS file lock (filelock's flock) on a hidden `.NAME.lock` beside the artefact, so a
process that dies releases it at once: a lock file left behind by a killed run never blocks
anyone. The holder writes who it is (pid, host, since when, what) into the lock file, which a
waiter prints once; the lock file stays (a few bytes; removing it would race with waiters); a waiter gives up after MONET_EDIT_LOCK_TIMEOUT seconds (default 3600) with
one line naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import MonetEditError, UsageError

DEFAULT_TIMEOUT = 3600.0
ENV = "MONET_EDIT_LOCK_TIMEOUT"


def lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def timeout() -> float:
    """Seconds a waiter waits for a holder ($MONET_EDIT_LOCK_TIMEOUT, default one hour)."""
    raw = os.environ.get(ENV)
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UsageError(f"{ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def holder(target: Path) -> str:
    """Who holds (or last held) the lock of `target`, in words."""
    try:
        info = json.loads(lock_path(target).read_text("utf-8"))
        since = time.strftime("%H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']} since {since} ({info['what']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def hold(target: str | Path, what: str, *, say=None) -> Iterator[None]:
    """Hold the lock of `target` for the block. `what` names the work for other waiters;
    `say(line)` is called once if this process has to wait."""
    from filelock import FileLock, Timeout

    target = Path(target)
    path = lock_path(target)
    limit = timeout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if say is not None:
                say(f"waiting for {holder(target)} to finish with {target.name}")
            lock.acquire(timeout=limit, poll_interval=0.2)
    except Timeout:
        raise MonetEditError(f"{target}: gave up after {limit:.0f} s waiting for {holder(target)} "
                             f"(raise {ENV} to wait longer)") from None
    except OSError as exc:
        raise MonetEditError(f"{path}: cannot lock ({exc.strerror or exc})") from None
    try:
        with contextlib.suppress(OSError):  # who holds it is a courtesy to waiters, not a requirement
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}
            with open(path, "r+", encoding="utf-8") as fh:  # flock does not read the file's bytes
                fh.write(json.dumps(info))
                fh.truncate()
        yield
    finally:
        lock.release()
