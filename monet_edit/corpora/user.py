"""User-supplied corpora (`--corpus PATH`): a .txt, .jsonl or .parquet file, or a directory of them."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from ..errors import UsageError
from ..infra import locks
from . import sources
from .registry import CorpusSpec
from .store import BuiltCorpus, cache_dir, dedupe, read_built, say, write_corpus

TEXT_EXTS = (".txt", ".text", ".md")
JSONL_EXTS = (".jsonl", ".ndjson")
PARQUET_EXTS = (".parquet",)
ALL_EXTS = TEXT_EXTS + JSONL_EXTS + PARQUET_EXTS


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {path}: not UTF-8 text (invalid byte at offset {exc.start})") from None


def _file_docs(path: Path, rel: str) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in TEXT_EXTS:
        text = _read_text(path)
        return [{"id": f"{rel}:{i:05d}", "text": t} for i, t in enumerate(sources.chunk_paragraphs(text))]
    if suffix in JSONL_EXTS:
        text = _read_text(path)
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UsageError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UsageError(f'{path}:{n}: each line must be a JSON object with a string field "text"')
            docs.append({"id": f"{rel}:{n:06d}", "text": row["text"]})
        return docs
    if suffix in PARQUET_EXTS:
        try:
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            if "text" not in schema.names:
                raise UsageError(f'{path}: no column "text" (columns: {", ".join(schema.names)})')
            column = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        except UsageError:
            raise
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        except Exception as exc:  # pyarrow raises ArrowInvalid etc. for a corrupt file
            raise UsageError(
                f"cannot read {path}: not a valid parquet file ({str(exc).splitlines()[0]})"
            ) from None
        return [{"id": f"{rel}:{i:06d}", "text": t} for i, t in enumerate(column) if isinstance(t, str)]
    raise UsageError(
        f"{path}: unsupported corpus file type {suffix or '(none)'}; use .txt, .jsonl or .parquet"
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "corpus"


def user_corpus(path: str | Path) -> BuiltCorpus:
    """Build (or reuse) a corpus from a user's file or directory; kind "general"."""
    started = time.perf_counter()
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"corpus path {p} does not exist")
    for part in (p.resolve(), *p.resolve().parents):  # a built OOS set read back as a user corpus
        if part.parent == cache_dir().resolve() and part.name.endswith("@oos"):
            from .oos_store import refusal

            raise UsageError(refusal(part.name))
    if p.is_dir():
        try:
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in ALL_EXTS)
        except OSError as exc:
            raise UsageError(f"cannot read directory {p}: {exc.strerror or exc}") from None
        if not files:
            raise UsageError(f"directory {p} holds no .txt, .jsonl or .parquet files")
        docs = []
        for f in files:
            docs.extend(_file_docs(f, f.relative_to(p).as_posix()))
    elif p.is_file():
        docs = _file_docs(p, p.name)
    else:
        raise UsageError(f"cannot read {p}: not a regular file or directory")
    name = (
        f"user-{_safe(p.resolve().name if p.name in ('', '.', '..') else p.stem if p.is_file() else p.name)}"
    )
    docs = dedupe(docs, name)
    if not docs:
        raise UsageError(f"corpus {p} is empty: no text found")
    spec = CorpusSpec(name, "general", str(p.resolve()), f"user corpus from {p}")
    key = hashlib.sha256()
    for d in docs:
        key.update(d["id"].encode() + b"\0" + d["text"].encode() + b"\0")
    target = cache_dir() / "user" / f"{name}-{key.hexdigest()[:16]}"
    done = read_built(spec, target, spec.source)
    if done is not None:
        return done
    with locks.hold(target, f"building corpus {name}", say=say):
        done = read_built(spec, target, spec.source)  # built by another process meanwhile?
        if done is not None:
            return done
        return write_corpus(spec, docs, target, source=spec.source, started=started)
