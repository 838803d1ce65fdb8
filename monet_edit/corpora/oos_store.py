"""Building the out-of-source sets into the corpus cache, and the guard that keeps their text out
of every embedded corpus.

A set is `<cache>/<target>@oos/` with eval.jsonl and meta.json only: it has no train or profile
split (loading one raises), because nothing but evaluation may read it. Written like the embedded
corpora (store.py): under the corpus lock, into a temporary directory renamed into place.

The guard: at build time every document is checked against the content of all embedded corpora
(every split): a document whose whitespace-normalised text, or any paragraph of 120 characters or
more, equals a document or paragraph of an embedded corpus is dropped (and counted in meta.json).
The sets come from other packages than the embedded corpora, so this is the second line of
defence, not the first. A set records the fingerprints it was checked against and is rebuilt
when any of them changes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

from .._version import __version__
from ..errors import UsageError
from ..infra import locks
from ..infra.atomic import output_dir
from . import registry, sources, store
from .oos_registry import RETAIN, OosSpec, Part, get_oos
from .oos_registry import availability as oos_availability
from .store import BuiltCorpus, cache_dir

FORMAT = 1  # bump when the layout or the documents of a built set change
MIN_PARAGRAPH = 120  # characters: shorter paragraphs (a licence line, "return nil") may repeat by chance
SPLIT = "eval"


class OosSet(BuiltCorpus):
    """A built out-of-source set: only its eval split exists."""

    def path(self, split: str) -> Path:
        if split != SPLIT:
            raise UsageError(
                f"{self.spec.name} is an out-of-source evaluation set: it has only an eval split "
                f"(no {split} split), and is never profiled, selected on or trained on"
            )
        return self.dir / f"{SPLIT}.jsonl"

    @property
    def data_files(self) -> dict[str, str]:
        return {SPLIT: str(self.dir / f"{SPLIT}.jsonl")}

    def to_dict(self) -> dict:
        return {**super().to_dict(), "target": self.meta.get("target"), "parts": self.meta.get("parts"),
                "dropped_overlap": self.meta.get("dropped_overlap")}  # fmt: skip


def refusal(name: str) -> str:
    """The one line that refuses an OOS set where a profile/reference/training corpus is expected."""
    return (
        f"{name} is an out-of-source evaluation set: it is never used for profiles, references, "
        f"selection or training (only `eval` reads it)"
    )


# ----------------------------------------------------------------------------- the guard


def _norm(text: str) -> str:
    return " ".join(text.split())


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


def fragments(text: str) -> Iterator[bytes]:
    """Content hashes a document is compared by: its whole text and each long paragraph."""
    yield _digest(_norm(text))
    for para in re.split(r"\n\s*\n", text):
        norm = _norm(para)
        if len(norm) >= MIN_PARAGRAPH:
            yield _digest(norm)


def embedded_fingerprints(build: bool = True) -> dict[str, str] | None:
    """{name: fingerprint} of every embedded corpus except `general` (a mixture of the others):
    the cached build, else (when `build`) a new build of each available one; None when one is
    available but not built and not `build`."""
    out = {}
    for spec in registry.list_corpora():
        if spec.kind == "general":
            continue
        built = store.cached(spec.name)
        if built is None and registry.availability(spec.name)[0]:
            if not build:
                return None
            built = store.build(spec.name)
        if built is not None:
            out[spec.name] = built.fingerprint
    return out


def guard_digest(fingerprints: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()


@lru_cache(maxsize=2)
def _embedded_index(digest: str) -> frozenset[bytes]:
    """The content hashes of every embedded corpus's documents (the digest keys the cache)."""
    del digest
    out: set[bytes] = set()
    for name in embedded_fingerprints() or {}:
        built = store.build(name)
        for split in registry.SPLITS:
            for doc in built.load(split):
                out.update(fragments(doc["text"]))
    return frozenset(out)


def overlaps(text: str, index: frozenset[bytes]) -> bool:
    return any(h in index for h in fragments(text))


# ----------------------------------------------------------------------------- building


def set_dir(name: str) -> Path:
    return cache_dir() / name


def _read_built(spec: OosSpec, target: Path, digest: str | None) -> OosSet | None:
    try:
        meta = json.loads((target / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or meta.get("version") != __version__ or meta.get("oos") is not True:
        return None
    if digest is None or meta.get("guard") != digest or not (target / f"{SPLIT}.jsonl").is_file():
        return None
    return OosSet(spec.corpus_spec(), meta["fingerprint"], target, meta["counts"], meta["chars"], meta)


def cached(name: str, fingerprints: dict[str, str] | None = None) -> OosSet | None:
    """The built set if it is cached and was checked against the cached embedded corpora (never
    builds); `fingerprints` (embedded_fingerprints(build=False)) saves looking them up again."""
    spec = get_oos(name)
    fps = fingerprints if fingerprints is not None else embedded_fingerprints(build=False)
    return _read_built(spec, set_dir(spec.name), guard_digest(fps) if fps is not None else None)


def build(name: str, *, force: bool = False) -> OosSet:
    """Build OOS set `name` into the cache (or reuse a valid build unless `force`); builds the embedded
    corpora first when they are not cached (the guard needs them)."""
    spec = get_oos(name)
    ok, why = oos_availability(spec.name)
    if not ok:
        raise UsageError(f"out-of-source set {spec.name} is unavailable: {why}")
    fingerprints = embedded_fingerprints()
    digest = guard_digest(fingerprints)
    target = set_dir(spec.name)
    if not force and (done := _read_built(spec, target, digest)) is not None:
        return done
    if spec.name == RETAIN:  # its parts are the other sets: build them outside this set's lock
        for part in spec.parts:
            build(part.key)
    with locks.hold(target, f"building out-of-source set {spec.name}", say=store.say):
        if not force and (done := _read_built(spec, target, digest)) is not None:
            return done
        return _build(spec, target, fingerprints, digest)


def _take(parts: tuple[Part, ...], cap: int, index: frozenset[bytes]) -> tuple[list[dict], dict, int]:
    """Documents of each part up to its share of `cap` characters, then more from parts that have
    more until `cap`; duplicates and documents overlapping the embedded corpora are skipped."""
    total_share = sum(p.share for p in parts)
    streams = {p.key: iter(p.read()) for p in parts}
    taken: dict[str, list[dict]] = {p.key: [] for p in parts}
    used = dict.fromkeys(streams, 0)
    seen: set[bytes] = set()
    dropped = 0

    def fill(part: Part, budget: float) -> None:
        nonlocal dropped
        for doc in streams[part.key]:
            text = doc["text"]
            h = _digest(_norm(text))
            if not text.strip() or h in seen:
                continue
            if overlaps(text, index):
                dropped += 1
                continue
            seen.add(h)
            taken[part.key].append(doc)
            used[part.key] += len(text)
            if used[part.key] >= budget:
                return

    for part in parts:
        fill(part, cap * part.share / total_share)
    for part in parts:
        room = cap - sum(used.values())
        if room <= 0:
            break
        fill(part, used[part.key] + room)
    docs = []
    for part in parts:
        part_docs = _packed(taken[part.key]) if part.pack else taken[part.key]
        docs.extend({**d, "id": f"{part.key}/{d['id']}", "part": part.key} for d in part_docs)
    return docs, {p.key: {"source": p.label(), "chars": used[p.key]} for p in parts}, dropped


def _packed(docs: list[dict]) -> list[dict]:
    """Consecutive short documents joined into documents of about sources.TEXT_DOC_CHARS characters."""
    out, cur, size = [], [], 0
    for doc in docs:
        if cur and size + len(doc["text"]) > sources.TEXT_DOC_CHARS:
            out.append(cur)
            cur, size = [], 0
        cur.append(doc)
        size += len(doc["text"]) + 2
    if cur:
        out.append(cur)
    return [{"id": group[0]["id"] + (f"+{len(group) - 1}" if len(group) > 1 else ""),
             "text": "\n\n".join(d["text"] for d in group)} for group in out]  # fmt: skip


def _build(spec: OosSpec, target: Path, fingerprints: dict[str, str], digest: str) -> OosSet:
    started = time.perf_counter()
    docs, parts, dropped = _take(spec.parts, spec.cap_chars, _embedded_index(digest))
    if not docs:
        raise UsageError(f"out-of-source set {spec.name} is empty: its sources hold no text")
    data = "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs).encode("utf-8")
    fingerprint = hashlib.sha256(SPLIT.encode() + b"\0" + data + b"\0").hexdigest()
    counts, chars = {SPLIT: len(docs)}, {SPLIT: sum(len(d["text"]) for d in docs)}
    meta = {
        "name": spec.name, "target": spec.target, "oos": True, "kind": spec.corpus_spec().kind,
        "family": spec.corpus_spec().family, "source": spec.source, "description": spec.description,
        "parts": parts, "fingerprint": fingerprint, "counts": counts, "chars": chars,
        "cap_chars": spec.cap_chars, "dropped_overlap": dropped, "checked_against": fingerprints,
        "guard": digest, "format": FORMAT, "version": __version__,
        "build_seconds": round(time.perf_counter() - started, 3),
    }  # fmt: skip
    with output_dir(target, force=True) as tmp:
        (tmp / f"{SPLIT}.jsonl").write_bytes(data)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return OosSet(spec.corpus_spec(), fingerprint, target, counts, chars, meta)


def retain_part(spec: OosSpec) -> Part:
    """retain@oos's share of set `spec`: its documents in stable-hash order, naming their set."""

    def read() -> Iterable[dict]:
        docs = build(spec.name).load(SPLIT)
        return [{"id": d["id"], "text": d["text"], "set": spec.name, "target": spec.target}
                for d in sorted(docs, key=lambda d: sources.stable_hash(d["id"]))]  # fmt: skip

    return Part(spec.name, spec.name, spec.description, read, lambda: oos_availability(spec.name)[0],
                f"the sources of {spec.name}")  # fmt: skip
