"""Routing profiles: how much a model routes a corpus's tokens through each expert.

Per routing group, over all E*E experts: n tokens and S = sum_t G(t) (a float64 GEMM over tokens
and heads, never the per-token E*E expansion). Labelled corpora also keep, per expert, the centred
second moment M2 = sum_t (G(t) - mean)^2 and the co-moment C = sum_t (G(t) - mean)(y(t) - mean_y),
and for the label its sum and centred M2_y: enough for a Pearson correlation that does not cancel.
These are computed exactly (two passes) over chunks of tokens and merged with Chan, Golub and
LeVeque's pairwise update, so profiles still add: the profile of A plus the profile of B is the
profile of A and B together, whatever the shard, batch or rank split, up to float64 rounding.

File format 2: safetensors with float64 [groups, E, E] tensors `S` (and `M2`, `C` when labelled)
and a `monet_edit` metadata entry holding JSON {format, n, sum_y, m2_y, meta}. Format 1 stored raw
power sums (S2, SY) whose one-pass correlation cancelled; such files are refused (re-profile).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import corpora
from ..errors import UsageError
from ..infra import atomic, distributed, locks, provenance
from ..infra.console import err
from ..infra.journal import Journal
from ..model import checkpoint, scoring

FORMAT = 2
OLD_FORMATS = (1,)  # refused with a line saying to re-profile; the cache recomputes them
META_KEY = "monet_edit"
HOLDOUT_EVERY = 5  # one profile-split document in five is held out (budget rule), never profiled
PRIME_DOCS = 512  # documents whose words are scored together (labelled profiles)
SHARD_TOKENS = 1 << 20  # tokens per journalled shard: the unit of --resume and of rank hand-out
CHUNK_ELEMENTS = 1 << 22  # labelled profiles expand G for this many (token, expert) pairs at a time
ROUNDING = 2.0**-40  # a variance below (ROUNDING * |mean|)^2 per token is rounding noise: treated as 0


class StaleProfile(UsageError):
    """A profile file of an older format: readable, but its statistics must be recomputed."""


@dataclass
class Profile:
    """Routing statistics of one model on one corpus (mergeable, so profiles of shards add)."""

    n: int
    S: torch.Tensor
    M2: torch.Tensor | None = None
    C: torch.Tensor | None = None
    sum_y: float | None = None
    m2_y: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return self.C is not None

    @property
    def groups(self) -> int:
        return self.S.shape[0]

    @property
    def experts(self) -> int:
        return self.S.shape[1]

    def mean(self) -> torch.Tensor:
        """Mean routing weight per token, [groups, E, E] (s_e in the skew rule)."""
        return self.S / self.n

    def pearson(self) -> torch.Tensor:
        """Pearson r between G_e(t) and y(t) per expert, [groups, E, E]; 0 where a variance is 0."""
        if not self.labelled:
            corpus = self.meta.get("corpus", "this corpus")
            raise UsageError(
                f"profile of {corpus} has no token labels; a correlation needs a labelled corpus (--toxicity)"
            )
        mean_y = self.sum_y / self.n
        var_g = torch.where(self.M2 > self.n * (ROUNDING * self.mean()) ** 2, self.M2, 0.0)
        var_y = self.m2_y if self.m2_y > self.n * (ROUNDING * mean_y) ** 2 else 0.0
        den = torch.sqrt(var_g * var_y)
        r = torch.where(den > 0, self.C / torch.where(den > 0, den, torch.ones_like(den)), 0.0)
        return r.clamp(-1.0, 1.0)

    def __add__(self, other: Profile) -> Profile:
        for key in ("model_fingerprint", "corpus_fingerprint"):
            if self.meta.get(key) != other.meta.get(key):
                raise UsageError(
                    f"cannot add profiles with different {key.replace('_', ' ')}s "
                    f"({str(self.meta.get(key))[:12]} vs {str(other.meta.get(key))[:12]})"
                )
        if self.S.shape != other.S.shape or self.labelled != other.labelled:
            raise UsageError("cannot add profiles of different shapes or with and without labels")
        merged = merge(self, other)
        return replace(merged, meta=dict(self.meta, tokens=merged.n))


def merge(a: Profile, b: Profile) -> Profile:
    """The statistics of a and b together (Chan et al.'s update: centred moments never cancel)."""
    n = a.n + b.n
    if not a.labelled:
        return Profile(n, a.S + b.S, meta=a.meta)
    f = a.n * b.n / n
    d = b.S / b.n - a.S / a.n
    dy = b.sum_y / b.n - a.sum_y / a.n
    return Profile(n, a.S + b.S, a.M2 + b.M2 + d * d * f, a.C + b.C + d * (dy * f),
                   a.sum_y + b.sum_y, a.m2_y + b.m2_y + dy * dy * f, a.meta)


def merge_all(parts: list[Profile]) -> Profile:
    """Merge in the given order (a fixed order gives the same bytes on every run)."""
    total = parts[0]
    for part in parts[1:]:
        total = merge(total, part)
    return total


# ---------------------------------------------------------------------------- accumulation


def group_stats(g1: torch.Tensor, g2: torch.Tensor, y: torch.Tensor | None) -> Profile:
    """One group's statistics over N tokens. g1, g2: [N, H, E]; y: [N] or None. Float64 throughout.

    Unlabelled: S as one GEMM over [N*H, E]. Labelled: G expanded for a chunk of tokens at a time
    (CHUNK_ELEMENTS bounds the memory), centred exactly within the chunk, chunks merged."""
    g1, g2 = g1.double(), g2.double()
    N, H, E = g1.shape
    if y is None:
        S = g1.reshape(N * H, E).T @ g2.reshape(N * H, E)
        return Profile(N, S[None])
    y = y.double()
    step = max(1, CHUNK_ELEMENTS // (E * E))
    parts = []
    for lo in range(0, N, step):
        a, b, yy = g1[lo : lo + step], g2[lo : lo + step], y[lo : lo + step]
        G = torch.einsum("nhi,nhj->nij", a, b)  # [c, E, E]
        S = G.sum(0)
        G -= S / len(yy)
        yc = yy - yy.mean()
        M2 = torch.einsum("nij,nij->ij", G, G)
        C = torch.einsum("n,nij->ij", yc, G)
        parts.append(Profile(len(yy), S[None], M2[None], C[None], float(yy.sum()), float(yc @ yc)))
    return merge_all(parts)


def stack_groups(per_group: list[Profile], meta: dict | None = None) -> Profile:
    """Per-group statistics of the same tokens as one [groups, E, E] profile."""
    first = per_group[0]

    def cat(name: str) -> torch.Tensor | None:
        return None if getattr(first, name) is None else torch.cat([getattr(p, name) for p in per_group])

    return Profile(first.n, cat("S"), cat("M2"), cat("C"), first.sum_y, first.m2_y, dict(meta or {}))


@torch.inference_mode()
def profile_rows(
    model,
    batch_rows: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int = 8,
    meta: dict | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Profile:
    """Profile every token of `batch_rows` [N, T] (labels: per-token y [N, T] or None);
    `on_batch(tokens)` is called after each batch (progress)."""
    device = next(model.parameters()).device
    parts: list[Profile] = []
    for start in range(0, batch_rows.shape[0], batch_size):
        ids = batch_rows[start : start + batch_size].to(device)
        routing: list = []
        model.model(ids, routing=routing, routing_only=True)
        y = None if labels is None else labels[start : start + batch_size].reshape(-1).to(device)
        per_group = [group_stats(g1.reshape(-1, *g1.shape[2:]), g2.reshape(-1, *g2.shape[2:]), y)
                     for g1, g2 in routing]
        parts.append(_to_cpu(stack_groups(per_group)))
        if on_batch is not None:
            on_batch(ids.numel())
    if not parts:
        cfg = model.config
        zeros = torch.zeros(cfg.num_groups, cfg.moe_experts, cfg.moe_experts, dtype=torch.float64)
        labelled = labels is not None
        return Profile(0, zeros, zeros.clone() if labelled else None, zeros.clone() if labelled else None,
                       0.0 if labelled else None, 0.0 if labelled else None, dict(meta or {}, tokens=0))
    total = merge_all(parts)
    return replace(total, meta=dict(meta or {}, tokens=total.n))


def _to_cpu(p: Profile) -> Profile:
    def cpu(t):
        return None if t is None else t.cpu()

    return replace(p, S=cpu(p.S), M2=cpu(p.M2), C=cpu(p.C))


class _Bar:
    """A rich progress bar of global tokens on stderr: rank 0 only, and only on a terminal."""

    def __init__(self, label: str, total: int, group: distributed.Group) -> None:
        self.bar = None
        self.world = group.world
        if group.main and sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(console=err, transient=True)
            self.task = self.bar.add_task(label, total=total)
            self.bar.start()

    def estimate(self, local_tokens: int) -> None:
        """Within a shard: this rank's tokens times the ranks (the others work in step)."""
        if self.bar is not None:
            self.bar.update(self.task, advance=local_tokens * self.world)

    def exact(self, global_tokens: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=global_tokens)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _reduce(local: Profile, group: distributed.Group) -> Profile:
    """Every rank's `local` profile merged, on every rank: sums are all-reduced; centred moments
    are gathered and merged in rank order (a sum of them would be wrong)."""
    if not local.labelled:
        (S,) = group.sum([local.S])
        (n,) = group.sum_numbers([local.n])
        return Profile(int(n), S, meta=local.meta)
    tensors = [local.S, local.M2, local.C,
               torch.tensor([local.n, local.sum_y, local.m2_y], dtype=torch.float64)]
    parts = []
    for S, M2, C, head in group.gather(tensors):
        n, sum_y, m2_y = head.tolist()
        if n > 0:
            parts.append(Profile(int(n), S, M2, C, sum_y, m2_y, local.meta))
    return merge_all(parts) if parts else local


def shard_rows(shard_tokens: int, seq_len: int, batch_size: int) -> int:
    """Rows per shard: about `shard_tokens` tokens, a whole number of batches (so every rank
    count runs exactly the batches one process would)."""
    return max(1, shard_tokens // (seq_len * batch_size)) * batch_size


def profile_sharded(
    model,
    batch_rows: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int = 8,
    rows_per_shard: int | None = None,
    group: distributed.Group | None = None,
    journal: Journal | None = None,
    meta: dict | None = None,
    progress: str | None = None,
) -> Profile | None:
    """Profile `batch_rows` shard by shard, data-parallel over the group's ranks.

    Each shard's batches are dealt round-robin to the ranks and their sums all-reduced; rank 0
    adds the shards in order (so the result does not depend on the number of ranks beyond float
    rounding) and records each one in `journal`, whose completed shards are reused. Returns the
    profile on rank 0 and None elsewhere."""
    group = group or distributed.group()
    meta = dict(meta or {})
    total_rows = batch_rows.shape[0]
    per = rows_per_shard or total_rows
    bar = _Bar(progress or "profiling", batch_rows.numel(), group)
    total: Profile | None = None
    try:
        for shard in range(-(-total_rows // per)):
            name = f"shard-{shard:05d}.safetensors"
            if journal is not None and journal.has(name):
                path = journal.path(name)  # read on rank 0; a damaged part stops every rank with its name
                part = group.on_main(lambda path=path: load(path, model_fingerprint=meta.get("model_fingerprint")),
                                     share=False)
            else:
                lo = shard * per
                mine = torch.tensor(group.take(min(per, total_rows - lo), batch_size), dtype=torch.long) + lo
                local = profile_rows(model, batch_rows[mine], None if labels is None else labels[mine],
                                     batch_size=batch_size, meta=meta, on_batch=bar.estimate)
                part = _reduce(local, group)
                if journal is not None and group.main:
                    journal.write(name, serialise(replace(part, meta=dict(meta, shard=shard))))
            if group.main:
                total = part if total is None else total + part
                bar.exact(total.n)
    finally:
        bar.stop()
    if total is None:
        return None
    return replace(total, meta=dict(meta, tokens=total.n))


def labelled_stream(
    tokenizer, docs: list[dict], max_tokens: int | None = None
) -> tuple[list[int], list[float]]:
    """The tokens of scoring.token_stream with each token's weak toxicity label (EOS gets 0)."""
    from ..corpora.labels import prime, token_labels

    ids: list[int] = []
    ys: list[float] = []
    for at, doc in enumerate(docs):
        if at % PRIME_DOCS == 0:
            prime([d["text"] for d in docs[at : at + PRIME_DOCS]])
        tok, offsets = tokenizer.encode_with_offsets(doc["text"])
        ys.extend(token_labels(offsets, doc["text"]))
        ids.extend(tok)
        if tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
            ys.append(0.0)
        if max_tokens is not None and len(ids) >= max_tokens:
            return ids[:max_tokens], ys[:max_tokens]
    return ids, ys


def profile_corpus(
    model,
    tokenizer,
    docs: list[dict],
    *,
    tokens: int,
    seq_len: int = 256,
    batch_size: int = 8,
    labels: bool = False,
    meta: dict,
    shard_tokens: int | None = None,
    group: distributed.Group | None = None,
    journal: Journal | None = None,
) -> Profile | None:
    """Profile up to `tokens` tokens of `docs` in rows of `seq_len` (a tail shorter than a row is
    dropped). With `labels`, each token's y is the weak toxicity score of its word. Sharded and
    data-parallel as profile_sharded (None on ranks other than 0)."""
    name = meta.get("corpus", "corpus")
    if tokens < seq_len:
        raise UsageError(f"--tokens {tokens} is smaller than one row of --seq-len {seq_len}")
    if labels:
        ids, ys = labelled_stream(tokenizer, docs, tokens)
    else:
        ids, ys = scoring.token_stream(tokenizer, docs, tokens), None
    batch_rows = scoring.rows(ids, seq_len - 1, name)
    y = (
        None
        if ys is None
        else torch.tensor(ys[: batch_rows.numel()], dtype=torch.float64).view_as(batch_rows)
    )
    record = dict(
        meta, tokens_requested=tokens, seq_len=seq_len, labelled=labels, provenance=provenance.record()
    )
    per = shard_rows(shard_tokens, seq_len, batch_size) if shard_tokens else None
    return profile_sharded(model, batch_rows, y, batch_size=batch_size, rows_per_shard=per, group=group,
                           journal=journal, meta=record, progress=f"profiling {name}")


# ---------------------------------------------------------------------------- files


def save(profile: Profile, path: str | Path) -> Path:
    """Write a profile atomically; the same profile always gives the same bytes."""
    return atomic.write_bytes(path, serialise(profile))


def serialise(profile: Profile) -> bytes:
    """A profile file's bytes (deterministic: sorted metadata, float64 tensors)."""
    from safetensors.torch import save as st_save

    tensors = {"S": profile.S}
    if profile.labelled:
        tensors.update(M2=profile.M2, C=profile.C)
    tensors = {k: v.to(torch.float64).contiguous() for k, v in tensors.items()}
    head = {
        "format": FORMAT,
        "n": profile.n,
        "sum_y": profile.sum_y,
        "m2_y": profile.m2_y,
        "meta": profile.meta,
    }
    return st_save(tensors, metadata={META_KEY: json.dumps(head, sort_keys=True)})


def load(path: str | Path, *, model_fingerprint: str | None = None, config=None) -> Profile:
    """Read and validate a profile; with `model_fingerprint` (and `config`), check it fits the model."""
    from ..model.checkpoint import read_tagged

    path = Path(path)
    tensors, head = read_tagged(path, META_KEY, "monet-edit profile")
    if not isinstance(head, dict) or not isinstance(head.get("meta"), dict):
        raise UsageError(f"{path}: not a monet-edit profile (no profile metadata)")
    if head.get("format") in OLD_FORMATS:
        raise StaleProfile(f"{path}: profile format {head['format']} was written by an older monet-edit "
                           f"(unstable statistics); re-profile it with `monet-edit profile`")
    if head.get("format") != FORMAT:
        raise UsageError(
            f"{path}: profile format {head.get('format')!r} is not supported (expected {FORMAT})"
        )
    S = tensors.get("S")
    labelled = "C" in tensors
    if S is None or S.dim() != 3 or S.shape[1] != S.shape[2] or set(tensors) - {"S", "M2", "C"}:
        raise UsageError(f"{path}: profile tensors must be S (and M2, C) of shape [groups, E, E]")
    if labelled != ("M2" in tensors) or any(t.shape != S.shape for t in tensors.values()):
        raise UsageError(f"{path}: profile tensors S, M2, C must all be present with the same shape")
    n = head.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise UsageError(f"{path}: profile is empty (token count {n!r})")
    sums = [head.get("sum_y"), head.get("m2_y")]
    if labelled and not all(isinstance(s, (int, float)) and math.isfinite(s) for s in sums):
        raise UsageError(f"{path}: labelled profile lacks finite sum_y and m2_y")
    if labelled and (sums[1] < 0 or bool((tensors["M2"] < 0).any())):
        raise UsageError(f"{path}: profile holds a negative centred second moment")
    if any(not bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise UsageError(f"{path}: profile holds NaN or infinite values")
    meta = head["meta"]
    if model_fingerprint is not None and meta.get("model_fingerprint") != model_fingerprint:
        raise UsageError(
            f"{path}: profile was made for another model (fingerprint "
            f"{str(meta.get('model_fingerprint'))[:12]}, this model is {model_fingerprint[:12]})"
        )
    if config is not None and tuple(S.shape) != (config.num_groups, config.moe_experts, config.moe_experts):
        raise UsageError(
            f"{path}: profile has shape {list(S.shape)}, the model needs "
            f"[{config.num_groups}, {config.moe_experts}, {config.moe_experts}]"
        )
    if labelled:
        return Profile(n, S, tensors["M2"], tensors["C"], float(sums[0]), float(sums[1]), meta)
    return Profile(n, S, meta=meta)


# ---------------------------------------------------------------------------- corpora and cache


def open_corpus(name: str) -> corpora.BuiltCorpus:
    """A registered corpus by name (built if needed) or a user corpus at an existing path."""
    try:
        return corpora.build(name)
    except UsageError:
        if Path(name).expanduser().exists():
            return corpora.user_corpus(name)
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


def default_dir() -> Path:
    """$MONET_EDIT_HOME/profiles (beside the corpus cache)."""
    return corpora.cache_dir().parent / "profiles"


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
    from ..model.loading import load_model, load_tokenizer

    group = distributed.group()
    directory = checkpoint.resolve(model_source)
    model_fp = checkpoint.model_fingerprint(directory)
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
                model, tokenizer = load_model(directory, device=dev), load_tokenizer(directory)
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
                "model": str(model_source),
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


def summary(profile: Profile, top: int = 5) -> list[dict]:
    """Per group: experts ever routed to, and the `top` experts by mean weight (id = i*E + j)."""
    mean = profile.mean()
    out = []
    for g in range(profile.groups):
        flat = mean[g].reshape(-1)
        values, ids = flat.topk(min(top, flat.numel()))
        out.append(
            {
                "group": g,
                "active": int((flat > 0).sum()),
                "top": [
                    {"expert": int(i), "mean": round(float(v), 6)} for v, i in zip(values, ids, strict=True)
                ],
            }
        )
    return out
