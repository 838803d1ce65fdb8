"""Human output on stderr (rich), machine output on stdout."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

# Under torchrun only rank 0 speaks; errors go through `alert`, which every rank may use.
_SILENT = int(os.environ.get("RANK", "0") or 0) > 0
err = Console(stderr=True, highlight=False, quiet=_SILENT)
alert = Console(stderr=True, highlight=False)


def emit_json(data: Any) -> None:
    if _SILENT:
        return
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
