"""The profile cache: one file per (model, corpus, tokens, seq_len), computed once and reused,
safe when several processes ask for the same profile at once (a lock; waiters reuse the result)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from .. import corpora
from ..corpora import HOLDOUT_EVERY, open_corpus, split_profile_docs
from ..infra import distributed, locks
from ..infra.console import err
from ..infra.journal import Journal
from ..model import checkpoint
from .accumulate import SHARD_TOKENS, profile_corpus, shard_rows
from .files import StaleProfile, load, save


def default_dir() -> Path:
    """<home>/profiles ($MONET_EDIT_HOME/profiles when set)."""
    return corpora.home() / "profiles"


def profile_path(
    out_dir: Path, corpus: corpora.BuiltCorpus, model_fp: str, tokens: int, seq_len: int
) -> Path:
    return out_dir / (
        f"{corpus.spec.name}-m{model_fp[:10]}-c{corpus.fingerprint[:10]}"
        f"-t{tokens}-s{seq_len}.profile.safetensors"
    )


def ensure_profiles(
    model_source,
    corpus_names: list[str],
    *,
    tokens: int,
    seq_len: int = 256,
    batch_size: int = 8,
    out_dir: str | Path | None = None,
    device: Any = None,
    quiet: bool = False,
    resume: bool = False,
    shard_tokens: int = SHARD_TOKENS,
) -> dict[str, Path]:
    """Profile each corpus's profile split (fit part) unless a profile for the same model
    fingerprint, corpus fingerprint, tokens and seq_len already exists; {name as given: path}.

    Under torchrun every rank calls this: the shards are shared out, rank 0 writes. Completed
    shards are journalled beside the profile; `resume` reuses those of an interrupted run."""
    from ..model.loading import load_model

    group = distributed.group()
    ckpt = checkpoint.of(model_source)
    model_fp = ckpt.fingerprint
    out = Path(out_dir) if out_dir is not None else default_dir()
    built = group.first(lambda: {name: open_corpus(name) for name in corpus_names})
    model = tokenizer = None
    paths: dict[str, Path] = {}
    reused: list[str] = []
    for key, corpus in built.items():
        path = profile_path(out, corpus, model_fp, tokens, seq_len)
        paths[key] = path
        with contextlib.ExitStack() as held:

            def claim(path=path, name=corpus.spec.name, held=held) -> bool:
                """On rank 0: True if the profile is cached; else hold its lock (another process
                computing it is waited for, and its result reused)."""
                if _cached(path, model_fp, quiet=True):
                    return True
                held.enter_context(locks.hold(path, f"profiling {name}", say=None if quiet else _say))
                return _cached(path, model_fp, quiet)

            if group.on_main(claim):
                reused.append(corpus.spec.name)
                continue
            if model is None:
                dev = distributed.rank_device(device, group)
                model, tokenizer = load_model(ckpt, device=dev), ckpt.tokenizer
            labels = corpus.spec.kind == "toxicity"
            per_shard = shard_rows(shard_tokens, seq_len, batch_size)
            job = {"model_fingerprint": model_fp, "corpus_fingerprint": corpus.fingerprint, "tokens": tokens,
                   "seq_len": seq_len, "batch_size": batch_size, "shard_rows": per_shard, "labelled": labels}
            journal = Journal(path, job, group, resume=resume)
            if journal.note and not quiet:
                err.print(f"profile {corpus.spec.name}: {journal.note}", soft_wrap=True)
            fit, _ = split_profile_docs(corpus.load("profile"))
            resolved = str(Path(key).expanduser().resolve())
            ref = resolved if corpus.spec.source == resolved else corpus.spec.name  # user corpora: their path
            meta = {
                "model_fingerprint": model_fp,
                "model": str(ckpt),
                "corpus": corpus.spec.name,
                "corpus_ref": ref,
                "corpus_kind": corpus.spec.kind,
                "corpus_fingerprint": corpus.fingerprint,
                "split": "profile",
                "docs": f"fit ({HOLDOUT_EVERY - 1} in {HOLDOUT_EVERY} documents)",
            }
            started = time.perf_counter()
            prof = profile_corpus(model, tokenizer, fit, tokens=tokens, seq_len=seq_len, batch_size=batch_size,
                                  labels=labels, meta=meta, shard_tokens=shard_tokens, group=group,
                                  journal=journal)
            seconds = time.perf_counter() - started
            if group.main:
                save(prof, path)
                journal.finish()
                if not quiet:
                    ranks = f" on {group.world} ranks" if group.world > 1 else ""
                    err.print(
                        f"profile {corpus.spec.name}: {prof.n:,} tokens in {seconds:.1f} s{ranks} "
                        f"({prof.n / max(seconds, 1e-9):,.0f} tokens/s) -> {path}",
                        soft_wrap=True,
                    )
    group.barrier()  # the profiles exist before any rank moves on
    if reused and not quiet:
        err.print(f"reused {len(reused)} profile(s) from {out}: {', '.join(reused)}", soft_wrap=True)
    return paths


def _say(line: str) -> None:
    err.print(line, soft_wrap=True)


def _cached(path: Path, model_fp: str, quiet: bool = False) -> bool:
    """True when a valid profile is already at `path` (a damaged cache file fails, with its name;
    one of an older format is recomputed)."""
    if not path.is_file():
        return False
    try:
        load(path, model_fingerprint=model_fp)
    except StaleProfile:
        if not quiet:
            err.print(f"{path.name}: older profile format, recomputing", soft_wrap=True)
        return False
    return True
