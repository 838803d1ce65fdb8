"""The one place that turns "a corpus name or a path" into a built corpus, and the hold-out
part of a profile split that profiles never see (the budget rule measures losses on it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UsageError
from . import oos_store
from .oos_registry import is_oos
from .store import BuiltCorpus, build
from .user import user_corpus

HOLDOUT_EVERY = 5  # one profile-split document in five is held out, never profiled


def open_corpus(name: str, *, user: bool | None = None, for_eval: bool = False) -> BuiltCorpus:
    """A registered corpus (built if needed) or a user corpus at a path. `user` True or False
    decides; None tries the registry first, then an existing path. Out-of-source sets (NAME@oos)
    open only `for_eval`; anywhere else (profiles, references, selection) they are refused."""
    if user:
        return user_corpus(name)
    if is_oos(name) and for_eval:
        return oos_store.build(name)
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
    """The out-of-source eval set of corpus `name` when one is registered and installed here."""
    from .oos_registry import availability, oos_name

    found = oos_name(name)
    return found if found is not None and availability(found)[0] else None
