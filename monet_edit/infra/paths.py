"""Where monet-edit keeps what it builds: corpora, profiles, compiled kernels."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def home() -> Path:
    """$MONET_EDIT_HOME if set, else the user's cache dir (~/.cache/monet-edit)."""
    home = os.environ.get("MONET_EDIT_HOME")
    if home:
        return Path(home).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "monet-edit"
