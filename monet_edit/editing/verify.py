"""Integrity checks of a checkpoint directory (`monet-edit verify`).

Structural problems that make the directory unreadable are UsageErrors (exit 2); problems in a
readable checkpoint (hash mismatch, masks disagreeing with the edit record) are collected and
reported together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..infra import provenance
from ..model import checkpoint
from ..model.info import describe
from ..model.writer import MANIFEST


def check(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    checked: list[str] = []
    problems: list[str] = []
    info = describe(directory)  # config valid, tensor names/shapes exact, masks [E, E]
    checked.append(f"config.json and {len(checkpoint.weight_files(directory))} weight file(s): names and shapes")
    for name, t in checkpoint.read_headers(directory).items():
        if checkpoint.MASK_KEY.match(name) and t.dtype != "BOOL":
            problems.append(f"mask tensor {name} has dtype {t.dtype}, expected BOOL")
    edit = info.get("edit")
    if isinstance(edit, dict):
        recorded = edit.get("counts")
        if recorded is not None and list(recorded) != info["masked_experts_per_group"]:
            problems.append(f"edit record says {list(recorded)} experts masked per group, "
                            f"the weights hold {info['masked_experts_per_group']}")
        else:
            checked.append(f"masks: {info['masked_experts_per_group']} experts per group")
    if (directory / MANIFEST).exists():
        bad = manifest_mismatches(directory)
        problems.extend(f"{name}: sha256 differs from manifest.json (or file missing)" for name in bad)
        if not bad:
            checked.append("manifest.json: every file's sha256 matches")
    return {"path": str(directory), "weights_sha256": info["weights_sha256"], "checked": checked,
            "problems": problems}


def manifest_mismatches(directory: str | Path) -> list[str]:
    """Files of a checkpoint whose sha256 no longer matches its manifest.json (empty = intact)."""
    import json

    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{directory}: no valid {MANIFEST} (not a checkpoint monet-edit wrote?)") from None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise UsageError(f"{directory}: {MANIFEST} 'files' must map file names to sha256 strings")
    for name in files:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise UsageError(f"{directory}: {MANIFEST} names {name!r}, not a plain file name in the directory")
    return [
        name
        for name, sha in sorted(files.items())
        if not (directory / name).is_file() or provenance.sha256_file(directory / name) != sha
    ]
