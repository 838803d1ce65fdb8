"""Completed parts of a long job, kept so that `--resume` can skip them after a crash.

A journal is a hidden directory beside the final output (`.NAME.partial`), holding `job.json`
(what the parts belong to: model, corpus, parameters) and one atomically written file per
completed part. It is not an output: nothing in it looks like a finished profile or report, and
it is removed once the final output is published. Without `--resume` an old journal is discarded;
with it, the parts are reused only when `job.json` matches the new job exactly.

Only rank 0 touches the directory; other ranks learn its answers through Group.share.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import atomic
from .distributed import Group

JOB = "job.json"


def location(output: Path) -> Path:
    """The journal directory of an output path."""
    return output.parent / f".{output.name}.partial"


class Journal:
    """Parts of one job, named by the caller ('shard-00003.safetensors', 'before-loss.json')."""

    def __init__(self, output: Path, job: dict[str, Any], group: Group, *, resume: bool) -> None:
        self.output = output
        self.dir = location(output)
        self.group = group
        self.kept, self.note = group.on_main(lambda: self._open(job, resume))

    def _open(self, job: dict[str, Any], resume: bool) -> tuple[list[str], str]:
        wanted = json.dumps(job, sort_keys=True)
        old = None
        if (self.dir / JOB).is_file():
            try:
                old = json.dumps(json.loads((self.dir / JOB).read_text("utf-8")), sort_keys=True)
            except (OSError, ValueError):
                old = None
        parts = sorted(p.name for p in self.dir.iterdir() if p.name != JOB and not p.name.startswith(".")) \
            if self.dir.is_dir() else []
        if resume and old == wanted:
            return parts, f"resuming: {len(parts)} completed part(s) kept from {self.dir}"
        note = ""
        if self.dir.exists():
            if resume:
                note = f"nothing to resume in {self.dir} (made by a different job); starting over"
            elif parts:
                note = f"discarded {len(parts)} completed part(s) of an earlier run (--resume keeps them)"
            shutil.rmtree(self.dir, ignore_errors=True)
        elif resume:
            note = "nothing to resume; starting from the beginning"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{self.dir}: cannot create ({exc.strerror or exc})") from None
        atomic.write_text(self.dir / JOB, wanted)
        return [], note

    def has(self, name: str) -> bool:
        return name in self.kept

    def path(self, name: str) -> Path:
        return self.dir / name

    def write(self, name: str, data: bytes) -> None:
        if self.group.main:
            atomic.write_bytes(self.dir / name, data)

    def finish(self) -> None:
        """The final output is published: the parts are no longer needed."""
        if self.group.main:
            discard(self.output)


def discard(output: Path) -> None:
    """Remove the journal of `output` (called once `output` is published)."""
    shutil.rmtree(location(Path(output)), ignore_errors=True)
