"""Atomic outputs: write to a temporary path beside the target, then rename.

A reader never sees a half-written file or directory, and an interrupted run leaves only a
hidden temporary that the next run ignores (and cleans when it reuses the name).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError, WriteError

# a write that fails for one of these is the storage's problem (full, read-only, over a limit),
# not a bug and not bad input: one line, exit 1, the temporary removed
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EIO}


def storage_error(path: str | Path, exc: OSError) -> WriteError:
    return WriteError(f"{path}: cannot write ({exc.strerror or exc}); nothing was written there")


def _tmp_name(target: Path) -> str:
    return f".{target.name}.tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publishable(path: str | Path, mode: int) -> None:
    """mkstemp/mkdtemp create private (0600/0700) paths; outputs get the usual umask permissions."""
    os.chmod(path, mode & ~_umask())


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (fsync, then rename over any previous file)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_name(path), dir=parent)
    except OSError as exc:
        if exc.errno in STORAGE_ERRORS:
            raise storage_error(path, exc) from None
        raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publishable(tmp, 0o666)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRORS:
            raise storage_error(path, exc) from None
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def check_new_dir(path: str | Path, force: bool) -> Path:
    """Refuse an existing output directory unless `force`; refuse a file in the way always."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is not a directory")
    if path.exists() and not force:
        raise UsageError(f"{path}: output directory exists (use --force to replace it)")
    return path


@contextlib.contextmanager
def output_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` only when the block succeeds.

    With `force`, an existing `path` is replaced only after the new one is complete.
    """
    path = check_new_dir(path, force)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_name(path), dir=parent))
    except OSError as exc:
        if exc.errno in STORAGE_ERRORS:
            raise storage_error(path, exc) from None
        raise UsageError(f"{path}: cannot create output directory ({exc.strerror or exc})") from None
    try:
        yield tmp
        _publishable(tmp, 0o777)
        _publish(tmp, path, force)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRORS:
            raise storage_error(path, exc) from None
        raise


def _publish(tmp: Path, path: Path, force: bool) -> None:
    """Rename the finished `tmp` to `path`. Another process may publish the same path meanwhile:
    with `force` the last one wins (each swap is atomic); without it, one that appeared while this
    run worked is never replaced."""
    parent = path.parent if str(path.parent) else Path(".")
    for _ in range(100):
        try:
            os.rename(tmp, path)  # fails if path is a non-empty directory or a file
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        if not force:
            raise UsageError(f"{path}: appeared while this run was writing it (another process?); "
                             f"not replaced (use --force to replace it)")
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
        try:
            os.replace(path, old / path.name)
        except FileNotFoundError:
            pass  # another process moved it away first: try again
        finally:
            shutil.rmtree(old, ignore_errors=True)
    raise WriteError(f"{path}: could not publish (other processes kept replacing it)")
