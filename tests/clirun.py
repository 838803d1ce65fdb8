"""Run the real `monet-edit` entry point in a subprocess, as a user or CI would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def cli(*args: str, env: dict | None = None, timeout: float = 300, cwd=None) -> Result:
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "200")
    proc = subprocess.run([sys.executable, "-m", "monet_edit", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_error(res: Result, code: int, *needles: str) -> None:
    """Exit code as given, one line on stderr containing each needle, no traceback."""
    assert res.code == code, (res.code, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
