"""Integrity checks of a checkpoint directory (`monet-edit verify`).

Structural problems that make the directory unreadable are UsageErrors (exit 2); problems in a
readable checkpoint (hash mismatch, masks disagreeing with the edit record) are collected and
reported together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..model import checkpoint
from ..model.info import describe


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
    if (directory / "manifest.json").exists():
        from .resect import verify as manifest_mismatches

        bad = manifest_mismatches(directory)
        problems.extend(f"{name}: sha256 differs from manifest.json (or file missing)" for name in bad)
        if not bad:
            checked.append("manifest.json: every file's sha256 matches")
    return {"path": str(directory), "weights_sha256": info["weights_sha256"], "checked": checked,
            "problems": problems}
