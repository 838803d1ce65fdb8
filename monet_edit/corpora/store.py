"""Building corpora into the cache: deterministic splits, jsonl files, fingerprints, atomic writes.

A built corpus is a directory `<cache>/<name>/` holding train.jsonl, profile.jsonl, eval.jsonl
(one JSON object per line, loadable by `datasets.load_dataset("json", data_files=...)`) and
meta.json (fingerprint, counts, source, tool version). It is written to a temporary directory
beside it and renamed into place, so a directory with a meta.json is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .._version import __version__
from ..errors import MonetEditError, UsageError
from ..infra import locks
from ..infra.atomic import output_dir
from ..infra.paths import home
from . import registry, sources
from .registry import SPLITS, CorpusSpec

FORMAT = 1  # bump when the layout or the documents of a built corpus change
FRACTIONS = (0.8, 0.1, 0.1)  # train / profile / eval, by rank of sha256(id)
GENERAL_SHARE_CHARS = 120_000  # characters each embedded corpus contributes to `general`


def cache_dir() -> Path:
    """Built corpora: $MONET_EDIT_CORPORA if set (one corpus cache shared by several homes, e.g. a
    CI job's or a team's), else <home>/corpora."""
    shared = os.environ.get("MONET_EDIT_CORPORA")
    return Path(shared).expanduser() if shared else home() / "corpora"


@dataclass
class BuiltCorpus:
    spec: CorpusSpec
    fingerprint: str
    dir: Path
    counts: dict[str, int]
    chars: dict[str, int]
    meta: dict = field(default_factory=dict, repr=False)

    def path(self, split: str) -> Path:
        _check_split(split)
        return self.dir / f"{split}.jsonl"

    @property
    def data_files(self) -> dict[str, str]:
        """For `datasets.load_dataset("json", data_files=built.data_files)`."""
        return {s: str(self.dir / f"{s}.jsonl") for s in SPLITS}

    def load(self, split: str) -> list[dict]:
        return _read_jsonl(self.path(split))

    def to_dict(self) -> dict:
        return {
            "name": self.spec.name,
            "kind": self.spec.kind,
            "family": self.spec.family,
            "source": self.meta.get("source", self.spec.source),
            "description": self.spec.description,
            "fingerprint": self.fingerprint,
            "dir": str(self.dir),
            "counts": dict(self.counts),
            "chars": dict(self.chars),
            "build_seconds": self.meta.get("build_seconds"),
            "version": self.meta.get("version"),
        }


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _read_jsonl(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError) as exc:
        raise MonetEditError(f"{path}: cannot read built corpus ({exc}); rebuild it with --force") from None


def assign_splits(docs: list[dict]) -> dict[str, list[dict]]:
    """Deterministic disjoint split: rank documents by sha256(id); first 80% train, next 10%
    profile, the rest eval. Documents keep their original order inside each split."""
    order = sorted(range(len(docs)), key=lambda i: hashlib.sha256(docs[i]["id"].encode("utf-8")).hexdigest())
    n = len(docs)
    n_train = int(n * FRACTIONS[0])
    n_profile = int(n * FRACTIONS[1])
    which = {}
    for rank, i in enumerate(order):
        which[i] = "train" if rank < n_train else ("profile" if rank < n_train + n_profile else "eval")
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for i, doc in enumerate(docs):
        out[which[i]].append(doc)
    return out


def dedupe(docs: Iterable[dict], name: str) -> list[dict]:
    """Drop empty documents and exact duplicate texts; prefix ids with the corpus name."""
    seen_text: set[str] = set()
    seen_id: set[str] = set()
    out = []
    for doc in docs:
        text = doc.get("text")
        if not isinstance(text, str) or not text.strip():
            continue
        h = hashlib.sha256(text.encode("utf-8")).digest()
        if h in seen_text:
            continue
        doc_id = f"{name}/{doc['id']}"
        if doc_id in seen_id:
            raise MonetEditError(f"corpus {name}: duplicate document id {doc_id}")
        seen_text.add(h)
        seen_id.add(doc_id)
        out.append({**doc, "id": doc_id})
    return out


def _dumps(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, sort_keys=True)


def write_corpus(
    spec: CorpusSpec,
    docs: list[dict],
    target: Path,
    *,
    source: str,
    extra: dict | None = None,
    started: float | None = None,
) -> BuiltCorpus:
    """Split `docs`, write the jsonl files and meta.json atomically into `target`."""
    if not docs:
        raise UsageError(f"corpus {spec.name} is empty: no documents with text")
    if all("_split" in d for d in docs):  # pre-assigned (the `general` mixture)
        splits = {
            s: [{k: v for k, v in d.items() if k != "_split"} for d in docs if d["_split"] == s]
            for s in SPLITS
        }
    else:
        splits = assign_splits(docs)
    for split in SPLITS:
        if not splits[split]:
            raise UsageError(
                f"corpus {spec.name} has only {len(docs)} documents; the {split} split is empty "
                f"(need at least 10 documents)"
            )
    digest = hashlib.sha256()
    counts, chars = {}, {}
    with output_dir(target, force=True) as tmp:
        for split in SPLITS:
            lines = [_dumps(d) + "\n" for d in splits[split]]
            data = "".join(lines).encode("utf-8")
            digest.update(split.encode() + b"\0" + data + b"\0")
            (tmp / f"{split}.jsonl").write_bytes(data)
            counts[split] = len(lines)
            chars[split] = sum(len(d["text"]) for d in splits[split])
        fingerprint = digest.hexdigest()
        meta = {
            "name": spec.name,
            "kind": spec.kind,
            "family": spec.family,
            "source": source,
            "description": spec.description,
            "fingerprint": fingerprint,
            "counts": counts,
            "chars": chars,
            "format": FORMAT,
            "version": __version__,
            "build_seconds": round(time.perf_counter() - started, 3) if started is not None else None,
            **(extra or {}),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return BuiltCorpus(spec, fingerprint, target, counts, chars, meta)


def read_built(spec: CorpusSpec, target: Path, source: str | None = None) -> BuiltCorpus | None:
    """The cached corpus at `target` if complete, of the current format and tool version."""
    try:
        meta = json.loads((target / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or meta.get("version") != __version__:
        return None
    if source is not None and meta.get("source") != source:
        return None
    if not all((target / f"{s}.jsonl").is_file() for s in SPLITS):
        return None
    return BuiltCorpus(spec, meta["fingerprint"], target, meta["counts"], meta["chars"], meta)


def corpus_dir(name: str, source: str = "local") -> Path:
    return cache_dir() / (name if source == "local" else f"{name}@{source}")


def cached(name: str, source: str = "local") -> BuiltCorpus | None:
    """The built corpus if it is in the cache, else None (never builds)."""
    spec = registry.get_spec(name)
    return read_built(spec, corpus_dir(spec.name, source), source)


def build(name: str, *, source: str = "local", force: bool = False) -> BuiltCorpus:
    """Build corpus `name` into the cache (or reuse a valid cached build unless `force`)."""
    spec = registry.get_spec(name)
    if source not in ("local", "hub"):
        raise UsageError(f"unknown source {source!r}; choose local or hub")
    target = corpus_dir(spec.name, source)
    if not force:
        done = read_built(spec, target, source)
        if done is not None:
            return done
    with locks.hold(target, f"building corpus {spec.name}", say=say):
        if not force:  # another process may have built it while this one waited
            done = read_built(spec, target, source)
            if done is not None:
                return done
        return _build(spec, target, source)


def say(line: str) -> None:
    """A waiting line on stderr (corpus builds are library code below the CLI)."""
    from ..infra.console import err

    err.print(line, soft_wrap=True)


def _build(spec: CorpusSpec, target: Path, source: str) -> BuiltCorpus:
    started = time.perf_counter()
    extra: dict = {}
    if source == "hub":
        from . import hub

        docs = hub.documents(spec)
        extra["hub_dataset"] = hub.dataset_for(spec)
    else:
        ok, why = registry.availability(spec.name)
        if not ok:
            raise UsageError(f"corpus {spec.name} is unavailable: {why}")
        docs = local_documents(spec)
        if spec.kind == "toxicity":
            extra["labels"] = "WEAK: " + registry.WEAK_LABELS
        if spec.kind == "general":
            extra["parts"] = sorted({d["source"] for d in docs})
    docs = dedupe(docs, spec.name) if spec.kind != "general" else docs
    return write_corpus(spec, docs, target, source=source, extra=extra, started=started)


def local_documents(spec: CorpusSpec) -> list[dict]:
    if spec.kind == "domain":
        return list(sources.mmlu_items(registry.DOMAINS[spec.name], registry.subject_to_category()))
    if spec.kind == "language" and spec.family == "code":
        return list(sources.CODE_SOURCES[spec.name].documents())
    if spec.kind == "language":
        return list(sources.natural_documents(spec.name))
    if spec.kind == "toxicity":
        from .labels import score_texts

        docs = dedupe(sources.fortune_documents(), "_")
        scores = score_texts([d["text"] for d in docs])
        return [
            {"id": d["id"][2:], "text": d["text"], "label": round(s, 4)}
            for d, s in zip(docs, scores, strict=True)
        ]
    return general_documents()


def general_documents() -> list[dict]:
    """Equal character shares of every available embedded corpus, each document kept in the
    split it has in its own corpus (so `general` eval never overlaps any corpus's train split)."""
    out: list[dict] = []
    parts = [s for s in registry.list_corpora() if s.kind != "general" and registry.availability(s.name)[0]]
    for spec in parts:
        built = build(spec.name)
        for split, frac in zip(SPLITS, FRACTIONS, strict=True):
            budget = GENERAL_SHARE_CHARS * frac
            docs = sorted(built.load(split), key=lambda d: hashlib.sha256(d["id"].encode()).hexdigest())
            used = 0
            for doc in docs:
                if used >= budget:
                    break
                out.append({"id": doc["id"], "text": doc["text"], "source": spec.name, "_split": split})
                used += len(doc["text"])
    return out


def load_split(name: str | BuiltCorpus, split: str) -> list[dict]:
    """Documents of one split of a corpus (a registered name or a BuiltCorpus); builds if needed."""
    _check_split(split)
    built = name if isinstance(name, BuiltCorpus) else build(name)
    return built.load(split)
