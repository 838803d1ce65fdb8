"""Routing profiles: how much a model routes a corpus's tokens through each expert (DESIGN.md 3).

Per routing group, over all E*E experts: n tokens, S = sum_t G(t) and, for labelled corpora,
S2 = sum_t G(t)^2, SY = sum_t G(t) y(t), sum y, sum y^2 (enough for a Pearson correlation with the
per-token label y). Every sum is a GEMM over tokens and heads, never the per-token E*E expansion,
and sums add: the profile of A plus the profile of B is the profile of A and B together.

File format: safetensors with float64 [groups, E, E] tensors `S` (and `S2`, `SY` when labelled)
and a `monet_edit` metadata entry holding JSON {format, n, sum_y, sum_y2, meta}.
"""

from __future__ import annotations

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

from . import atomic, checkpoint, corpora, distributed, provenance, scoring
from .console import err
from .errors import UsageError
from .journal import Journal

FORMAT = 1
META_KEY = "monet_edit"
HOLDOUT_EVERY = 5  # one profile-split document in five is held out (budget rule), never profiled
PRIME_DOCS = 512  # documents whose words are scored together (labelled profiles)
SHARD_TOKENS = 1 << 20  # tokens per journalled shard: the unit of --resume and of rank hand-out


@dataclass
class Profile:
    """Routing statistics of one model on one corpus (sums, so profiles of shards add)."""

    n: int
    S: torch.Tensor
    S2: torch.Tensor | None = None
    SY: torch.Tensor | None = None
    sum_y: float | None = None
    sum_y2: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return self.SY is not None

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
        n = float(self.n)
        cov = n * self.SY - self.S * self.sum_y
        var_g = (n * self.S2 - self.S * self.S).clamp(min=0.0)
        var_y = max(n * self.sum_y2 - self.sum_y * self.sum_y, 0.0)
        den = torch.sqrt(var_g * var_y)
        return torch.where(
            den > 0, cov / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den)
        )

    def __add__(self, other: Profile) -> Profile:
        for key in ("model_fingerprint", "corpus_fingerprint"):
            if self.meta.get(key) != other.meta.get(key):
                raise UsageError(
                    f"cannot add profiles with different {key.replace('_', ' ')}s "
                    f"({str(self.meta.get(key))[:12]} vs {str(other.meta.get(key))[:12]})"
                )
        if self.S.shape != other.S.shape or self.labelled != other.labelled:
            raise UsageError("cannot add profiles of different shapes or with and without labels")

        def add(a, b):
            return None if a is None else a + b

        n = self.n + other.n
        return Profile(
            n,
            self.S + other.S,
            add(self.S2, other.S2),
            add(self.SY, other.SY),
            add(self.sum_y, other.sum_y),
            add(self.sum_y2, other.sum_y2),
            dict(self.meta, tokens=n),
        )


# ---------------------------------------------------------------------------- accumulation


def _stats(g1: torch.Tensor, g2: torch.Tensor, y: torch.Tensor | None) -> list[torch.Tensor]:
    """One group's sums over a batch as GEMMs. g1, g2: [N, H, E] fp32; y: [N] or None."""
    N, H, E = g1.shape
    a, b = g1.reshape(N * H, E), g2.reshape(N * H, E)
    out = [a.T @ b]
    if y is not None:
        # G_ij^2 = sum_{h,h'} g1[h,i] g1[h',i] g2[h,j] g2[h',j]: one GEMM over [N*H*H, E].
        p1 = (g1.unsqueeze(2) * g1.unsqueeze(1)).reshape(N * H * H, E)
        p2 = (g2.unsqueeze(2) * g2.unsqueeze(1)).reshape(N * H * H, E)
        out.append(p1.T @ p2)
        out.append((g1 * y[:, None, None]).reshape(N * H, E).T @ b)
    return out


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
    cfg = model.config
    device = next(model.parameters()).device
    groups, E = cfg.num_groups, cfg.moe_experts
    k = 1 if labels is None else 3
    totals = [torch.zeros(groups, E, E, dtype=torch.float64, device=device) for _ in range(k)]
    sum_y = sum_y2 = 0.0
    n = 0
    for start in range(0, batch_rows.shape[0], batch_size):
        ids = batch_rows[start : start + batch_size].to(device)
        routing: list = []
        model.model(ids, routing=routing)
        y = None
        if labels is not None:
            y64 = labels[start : start + batch_size].reshape(-1).to(device, torch.float64)
            sum_y += float(y64.sum())
            sum_y2 += float((y64 * y64).sum())
            y = y64.float()
        for g, (g1, g2) in enumerate(routing):
            flat1 = g1.reshape(-1, *g1.shape[2:]).float()
            flat2 = g2.reshape(-1, *g2.shape[2:]).float()
            for total, part in zip(totals, _stats(flat1, flat2, y), strict=True):
                total[g] += part.double()
        n += ids.numel()
        if on_batch is not None:
            on_batch(ids.numel())
    cpu = [t.cpu() for t in totals]
    if labels is None:
        return Profile(n, cpu[0], meta=dict(meta or {}, tokens=n))
    return Profile(n, cpu[0], cpu[1], cpu[2], sum_y, sum_y2, dict(meta or {}, tokens=n))


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
    """The sum of every rank's `local` profile, on every rank."""
    tensors = [local.S] + ([local.S2, local.SY] if local.labelled else [])
    summed = group.sum(tensors)
    n, sum_y, sum_y2 = group.sum_numbers([local.n, local.sum_y or 0.0, local.sum_y2 or 0.0])
    if not local.labelled:
        return Profile(int(n), summed[0], meta=local.meta)
    return Profile(int(n), summed[0], summed[1], summed[2], sum_y, sum_y2, local.meta)


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
    from .corpora.toxicity import prime, token_labels

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
        tensors.update(S2=profile.S2, SY=profile.SY)
    tensors = {k: v.to(torch.float64).contiguous() for k, v in tensors.items()}
    head = {
        "format": FORMAT,
        "n": profile.n,
        "sum_y": profile.sum_y,
        "sum_y2": profile.sum_y2,
        "meta": profile.meta,
    }
    return st_save(tensors, metadata={META_KEY: json.dumps(head, sort_keys=True)})


def load(path: str | Path, *, model_fingerprint: str | None = None, config=None) -> Profile:
    """Read and validate a profile; with `model_fingerprint` (and `config`), check it fits the model."""
    from .checkpoint import read_tagged

    path = Path(path)
    tensors, head = read_tagged(path, META_KEY, "monet-edit profile")
    if not isinstance(head, dict) or not isinstance(head.get("meta"), dict):
        raise UsageError(f"{path}: not a monet-edit profile (no profile metadata)")
    if head.get("format") != FORMAT:
        raise UsageError(
            f"{path}: profile format {head.get('format')!r} is not supported (expected {FORMAT})"
        )
    S = tensors.get("S")
    labelled = "SY" in tensors
    if S is None or S.dim() != 3 or S.shape[1] != S.shape[2] or set(tensors) - {"S", "S2", "SY"}:
        raise UsageError(f"{path}: profile tensors must be S (and S2, SY) of shape [groups, E, E]")
    if labelled != ("S2" in tensors) or any(t.shape != S.shape for t in tensors.values()):
        raise UsageError(f"{path}: profile tensors S, S2, SY must all be present with the same shape")
    n = head.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise UsageError(f"{path}: profile is empty (token count {n!r})")
    sums = [head.get("sum_y"), head.get("sum_y2")]
    if labelled and not all(isinstance(s, (int, float)) and math.isfinite(s) for s in sums):
        raise UsageError(f"{path}: labelled profile lacks finite sum_y and sum_y2")
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
        return Profile(n, S, tensors["S2"], tensors["SY"], float(sums[0]), float(sums[1]), meta)
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
    from .loading import load_model, load_tokenizer

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
        if group.on_main(lambda path=path: _cached(path, model_fp)):
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


def _cached(path: Path, model_fp: str) -> bool:
    """True when a valid profile is already at `path` (a damaged cache file fails, with its name)."""
    if not path.is_file():
        return False
    load(path, model_fingerprint=model_fp)
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
