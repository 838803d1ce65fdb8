"""What made an output: tool version, git revision, library versions, time.

Every file a user keeps (profile, mask, checkpoint, report) embeds this record.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from pathlib import Path
from typing import Any

from .._version import __version__

# The one key under which monet-edit stores what it made: the edit record in a checkpoint's
# config.json, and the JSON metadata of its safetensors outputs (profiles, masks).
RECORD_KEY = "monet_edit"


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """The git commit of the monet-edit source tree, or 'unknown' for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out + ("-dirty" if dirty else "")


def record(**extra: Any) -> dict[str, Any]:
    """The provenance block: versions and revision plus the caller's fields (seed, rule, ...).

    No timestamp: the same command must give byte-identical files.
    """
    import torch

    out: dict[str, Any] = {
        "tool": "monet-edit",
        "version": __version__,
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    out.update(extra)
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
