"""The one place that turns "a corpus name or a path" into a built corpus, and the hold-out
part of a profile split that profiles never see (the budget rule measures losses on it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UsageError
from .store import BuiltCorpus, build
from .user import user_corpus

HOLDOUT_EVERY = 5  # one profile-split document in five is held out, never profiled


def open_corpus(name: str, *, user: bool | None = None) -> BuiltCorpus:
    """A registered corpus (built if needed) or a user corpus at a path. `user` True or False
    decides; None tries the registry first, then an existing path."""
    if user:
        return user_corpus(name)
    try:
        return build(name)
    except UsageError:
        if user is None and Path(name).expanduser().exists():
            return user_corpus(name)
        raise


def split_profile_docs(docs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(fit, holdout) of a profile split: every document whose sha256(id) is 0 mod 5 is held out.

    Profiles use only `fit`; the budget rule measures losses on `holdout`, never on the eval split.
    """
    fit, holdout = [], []
    for doc in docs:
        h = int(hashlib.sha256(doc["id"].encode("utf-8")).hexdigest()[:8], 16)
        (holdout if h % HOLDOUT_EVERY == 0 else fit).append(doc)
    return fit, holdout


def oos_set(name: str) -> str | None:
    """The out-of-source eval set of corpus `name`, when one is registered and installed."""
    from . import registry

    find = getattr(registry, "oos_name", None)
    return find(name) if find is not None else None
