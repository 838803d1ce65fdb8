"""Corpus registry: embedded offline corpora (domains, languages, toxicity, general), opt-in hub
sources and user corpora, built into a cache as `datasets`-loadable jsonl with deterministic,
disjoint train / profile / eval splits.

No torch and no heavy imports at module import time (the CLI's --help must stay fast).
"""

from __future__ import annotations

from .registry import (
    FAMILIES,
    KINDS,
    SPLITS,
    WEAK_LABELS,
    CorpusSpec,
    availability,
    get_spec,
    list_corpora,
    names,
)
from .resolve import HOLDOUT_EVERY, oos_set, open_corpus, split_profile_docs
from .store import BuiltCorpus, build, cache_dir, cached, home, load_split
from .user import user_corpus

__all__ = [
    "FAMILIES",
    "HOLDOUT_EVERY",
    "KINDS",
    "SPLITS",
    "WEAK_LABELS",
    "BuiltCorpus",
    "CorpusSpec",
    "availability",
    "build",
    "cache_dir",
    "cached",
    "get_spec",
    "home",
    "list_corpora",
    "load_split",
    "names",
    "oos_set",
    "open_corpus",
    "split_profile_docs",
    "user_corpus",
]
