"""Profiling a model on token rows: the routing of each batch turned into statistics, shard by
shard, data-parallel over torchrun ranks, journalled for --resume, with a progress bar."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace

import torch

from ..errors import UsageError
from ..infra import distributed, provenance
from ..infra.console import err
from ..infra.journal import Journal
from ..model import scoring
from .files import load, serialise
from .stats import Profile, group_stats, merge_all, stack_groups

PRIME_DOCS = 512  # documents whose words are scored together (labelled profiles)
SHARD_TOKENS = 1 << 20  # tokens per journalled shard: the unit of --resume and of rank hand-out


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
        model.model(ids, routing=routing)
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
                       0.0 if labelled else None, 0.0 if labelled else None, dict(meta or {}, tokens=0), zeros.clone())
    total = merge_all(parts)
    return replace(total, meta=dict(meta or {}, tokens=total.n))


def _to_cpu(p: Profile) -> Profile:
    def cpu(t):
        return None if t is None else t.cpu()

    return replace(p, S=cpu(p.S), M2=cpu(p.M2), C=cpu(p.C), A=cpu(p.A))


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
        S, A = group.sum([local.S, local.A])
        (n,) = group.sum_numbers([local.n])
        return Profile(int(n), S, meta=local.meta, A=A)
    tensors = [local.S, local.M2, local.C, local.A,
               torch.tensor([local.n, local.sum_y, local.m2_y], dtype=torch.float64)]
    parts = []
    for S, M2, C, A, head in group.gather(tensors):
        n, sum_y, m2_y = head.tolist()
        if n > 0:
            parts.append(Profile(int(n), S, M2, C, sum_y, m2_y, local.meta, A))
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
