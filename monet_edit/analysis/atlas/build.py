"""`atlas build`: one pass over the text that keeps, for every expert of every routing group, its
top-k occurrences, its density and its usage per corpus.

Per batch and group only the active pairs are touched (pairs.active_pairs: at most H*k*k per
token); each expert's top-k list is updated only where it occurs, and `active`/`usage` are
scatter-added per (expert, corpus). The text is cut into shards of whole batches (the unit of
--resume and of rank hand-out, as for profiles): each shard's batches are dealt round-robin to the
ranks, the ranks' shard states are summed (counts, usage) and their top-k lists merged in rank
order, and rank 0 folds the shard into the running state and journals a snapshot of it. Merging
by (-weight, position) makes the result independent of the number of ranks and of resumption.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import UsageError
from ...infra import atomic, distributed, provenance
from ...infra.console import err
from ...infra.journal import Journal
from . import pairs, store

SHARD_TOKENS = 1 << 20
SNAPSHOT = "state-{:05d}.safetensors"
MAX_TOP = 256  # top-k slots per expert: more would not fit a page, and cost 12 bytes each per expert


@dataclass
class Text:
    """The scanned text: rows [R, T] (corpus after corpus) and each row's corpus index."""

    ids: torch.Tensor
    row_corpus: torch.Tensor
    corpora: list[dict]


@dataclass
class State:
    """What the pass accumulates, per group g and expert e: top-k weights [G, E*E, K] and
    positions, and per corpus the active-token counts and weight sums [G, E*E, C]."""

    top_w: torch.Tensor
    top_p: torch.Tensor
    active: torch.Tensor
    usage: torch.Tensor

    @classmethod
    def zeros(cls, groups: int, experts: int, top: int, corpora: int, device=None) -> State:
        w, p = pairs.empty_lists(groups * experts * experts, top, device)
        shape = (groups, experts * experts)
        return cls(w.view(*shape, top), p.view(*shape, top),
                   torch.zeros(*shape, corpora, dtype=torch.long, device=device),
                   torch.zeros(*shape, corpora, dtype=torch.float64, device=device))

    def merge(self, other: State) -> State:
        """This state and a later one (of text after this one's) together: counts and sums add,
        lists merge."""
        k = self.top_w.shape[-1]
        w, p = pairs.merge_lists(self.top_w.flatten(0, 1), self.top_p.flatten(0, 1),
                                 other.top_w.flatten(0, 1).to(self.top_w.device),
                                 other.top_p.flatten(0, 1).to(self.top_w.device), k, later=True)
        return State(w.view_as(self.top_w), p.view_as(self.top_p), self.active + other.active.to(self.active.device),
                     self.usage + other.usage.to(self.usage.device))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name).cpu().contiguous() for f in fields(self)}


def load_text(tokenizer, names: list[str], *, tokens: int, seq_len: int, split: str) -> Text:
    """Up to `tokens` tokens of each corpus's `split`, in rows of `seq_len`, corpus after corpus."""
    from ...corpora import open_corpus
    from ..experts import corpus_rows

    blocks, corpora, first = [], [], 0
    for name in names:
        built = open_corpus(name)
        rows, fingerprint = corpus_rows(tokenizer, name, tokens=tokens, seq_len=seq_len, split=split)
        spec = built.spec
        resolved = str(Path(name).expanduser().resolve())
        corpora.append({"name": spec.name, "ref": resolved if spec.source == resolved else spec.name,
                        "kind": spec.kind, "fingerprint": fingerprint, "first_row": first,
                        "rows": rows.shape[0], "tokens": rows.numel()})
        blocks.append(rows)
        first += rows.shape[0]
    if len({c["name"] for c in corpora}) < len(corpora):
        raise UsageError("--corpus: the same corpus is given twice")
    ids = torch.cat(blocks)
    row_corpus = torch.repeat_interleave(torch.arange(len(blocks)), torch.tensor([b.shape[0] for b in blocks]))
    return Text(ids, row_corpus, corpora)


@torch.inference_mode()
def scan(model, text: Text, rows: torch.Tensor, state: State, *, batch_size: int, on_batch=None) -> None:
    """Add the tokens of `rows` (global row indices, whole batches) to `state`."""
    device = state.top_w.device
    T, C = text.ids.shape[1], len(text.corpora)
    row_corpus = text.row_corpus.to(device)
    for start in range(0, rows.numel(), batch_size):
        batch = rows[start:start + batch_size]
        routing: list = []
        model.model(text.ids[batch].to(device), routing=routing)
        row_of_token = batch.to(device).repeat_interleave(T)
        base = row_of_token * T + torch.arange(T, device=device).repeat(batch.numel())
        corpus = row_corpus[row_of_token]
        for g, (g1, g2) in enumerate(routing):
            token, expert, weight = pairs.active_pairs(g1.flatten(0, 1), g2.flatten(0, 1))
            pairs.add_candidates(state.top_w[g], state.top_p[g], expert, weight, base[token])
            slot = expert * C + corpus[token]
            state.active[g].view(-1).index_add_(0, slot, torch.ones_like(slot))
            state.usage[g].view(-1).index_add_(0, slot, weight.double())
        if on_batch is not None:
            on_batch(batch.numel() * T)


def reduce(local: State, group: distributed.Group) -> State:
    """The ranks' states of one shard together, on every rank: counts and sums all-reduced, top-k
    lists gathered and merged (in rank order; the order does not change the result)."""
    if group.world == 1:
        return local
    active, usage = group.sum([local.active, local.usage])
    k = local.top_w.shape[-1]
    w = p = None
    for rank_w, rank_p in group.gather([local.top_w, local.top_p]):
        rank_w, rank_p = rank_w.float().flatten(0, 1), rank_p.long().flatten(0, 1)
        w, p = (rank_w, rank_p) if w is None else pairs.merge_lists(w, p, rank_w, rank_p, k)
    return State(w.view_as(local.top_w), p.view_as(local.top_p), active.long(), usage)


def _snapshot_bytes(state: State, next_shard: int) -> bytes:
    from safetensors.torch import save

    return save(state.tensors(), metadata={"next_shard": str(next_shard)})


def _load_snapshot(path: Path, like: State) -> tuple[State, int]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as fh:
            next_shard = int(fh.metadata()["next_shard"])
    except Exception:  # safetensors raises its own error type (or a panic) on damaged bytes
        raise UsageError(f"{path}: damaged journal part; run again without --resume") from None
    state = State(**{f.name: tensors.get(f.name) for f in fields(State)})
    for f in fields(State):
        got, want = getattr(state, f.name), getattr(like, f.name)
        if got is None or got.shape != want.shape or got.dtype != want.dtype:
            raise UsageError(f"{path}: journal part does not fit this build; run again without --resume")
    return State(*(getattr(state, f.name).to(like.top_w.device) for f in fields(State))), next_shard


class _Progress:
    """Tokens scanned, as a rich bar on rank 0's terminal (nothing elsewhere)."""

    def __init__(self, total: int, group: distributed.Group) -> None:
        import sys

        self.bar = None
        self.world = group.world
        if group.main and sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(console=err, transient=True)
            self.task = self.bar.add_task("atlas", total=total)
            self.bar.start()

    def advance(self, tokens: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=tokens * self.world)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def build(model_source: str, names: list[str], *, out: str | Path, tokens: int, seq_len: int = 128,
          batch_size: int = 8, top: int = 16, split: str = "profile", shard_tokens: int = SHARD_TOKENS,
          device: Any = None, force: bool = False, resume: bool = False, command: str = "") -> dict | None:
    """Build the atlas of `model_source` over the corpora `names` into `out`; its meta on rank 0
    (None on the other ranks). Under torchrun every rank calls this."""
    from ...model import checkpoint, loading
    from ...profiling.accumulate import shard_rows

    group = distributed.group()
    out = Path(out)
    ckpt = checkpoint.of(model_source)
    config = ckpt.config
    if seq_len > config.max_position_embeddings:
        raise UsageError(f"--seq-len {seq_len} exceeds the model's {config.max_position_embeddings} positions")
    group.on_main(lambda: atomic.check_new_dir(out, force))
    fingerprint = ckpt.fingerprint
    tokenizer = ckpt.tokenizer
    text = group.first(lambda: load_text(tokenizer, names, tokens=tokens, seq_len=seq_len, split=split))
    G, E, C = config.num_groups, config.moe_experts, len(text.corpora)
    rows_total = text.ids.shape[0]
    per = shard_rows(shard_tokens, seq_len, batch_size)
    job = {"model_fingerprint": fingerprint, "corpora": [[c["name"], c["fingerprint"], c["rows"]] for c in text.corpora],
           "seq_len": seq_len, "batch_size": batch_size, "top": top, "split": split, "shard_rows": per}
    journal = Journal(out, job, group, resume=resume)
    if journal.note:
        err.print(f"atlas: {journal.note}", soft_wrap=True)
    need = store.footprint(groups=G, experts=E, top=top, corpora=C, tokens=text.ids.numel(), seq_len=seq_len,
                           vocab=tokenizer.vocab_size)
    err.print(f"atlas: {text.ids.numel():,} tokens of {C} corpora, {G} groups x {E * E:,} experts, top {top}: "
              f"about {store.human(need['memory'])} of memory and {store.human(need['disk'])} on disk",
              soft_wrap=True)
    dev = distributed.rank_device(device, group)
    model = loading.load_model(ckpt, device=dev)
    dev = next(model.parameters()).device
    running = State.zeros(G, E, top, C, dev) if group.main else None
    kept = sorted(n for n in journal.kept if n.startswith("state-"))

    first_shard = 0
    if kept:
        loaded = group.on_main(lambda: _load_snapshot(journal.path(kept[-1]), running), share=False)
        if group.main:
            running, first_shard = loaded
        first_shard = group.share(first_shard)
    shards = -(-rows_total // per)
    progress = _Progress(text.ids.numel() - first_shard * per * seq_len, group)
    started = time.perf_counter()
    try:
        for shard in range(first_shard, shards):
            lo = shard * per
            mine = torch.tensor(group.take(min(per, rows_total - lo), batch_size), dtype=torch.long) + lo
            local = running if group.world == 1 else State.zeros(G, E, top, C, dev)
            scan(model, text, mine, local, batch_size=batch_size, on_batch=progress.advance)
            part = reduce(local, group)
            if group.main:
                running = part if group.world == 1 else running.merge(part)
                if shard + 1 < shards:
                    journal.write(SNAPSHOT.format(shard), _snapshot_bytes(running, shard + 1))
                    if shard > 0 and journal.path(SNAPSHOT.format(shard - 1)).exists():
                        journal.path(SNAPSHOT.format(shard - 1)).unlink()
    finally:
        progress.stop()
    seconds = time.perf_counter() - started
    meta = None
    if group.main:
        masks = model.masks()
        model_meta = {"source": str(model_source), "directory": str(ckpt.dir), "fingerprint": fingerprint,
                      "decompose": config.moe_decompose, "layers": config.num_hidden_layers,
                      "groups": G, "experts": E, "heads": config.moe_heads, "topk": config.moe_topk,
                      "vocab": tokenizer.vocab_size,
                      "masked": [int(masks[g].sum()) if g in masks else 0 for g in range(G)]}
        params = {"tokens_per_corpus": tokens, "seq_len": seq_len, "batch_size": batch_size, "top": top,
                  "split": split, "shard_tokens": shard_tokens}
        meta = {"kind": "monet-edit atlas", "model": model_meta, "corpora": text.corpora, "parameters": params,
                "tokens": text.ids.numel(), "ranks": group.world,
                "provenance": provenance.record(command=command, model_fingerprint=fingerprint,
                                                corpus_fingerprints={c["name"]: c["fingerprint"] for c in text.corpora},
                                                parameters=params)}
        with atomic.output_dir(out, force) as tmp:
            meta = store.write(tmp, meta, arrays(running, text, tokenizer.vocab_size), tokenizer.path, ckpt.dir)
        journal.finish()
        meta["seconds"] = seconds
    group.barrier()
    return meta


def arrays(state: State, text: Text, vocab: int) -> dict[str, dict[str, np.ndarray]]:
    """The atlas files' arrays from the final state (see store.py), with the token-id index."""
    ids = text.ids.numpy().astype(np.int32)
    top_w = state.top_w.cpu().numpy()
    top_p = state.top_p.cpu().numpy()
    valid = (top_p >= 0).reshape(-1)
    entries = np.flatnonzero(valid)
    token = ids.reshape(-1)[top_p.reshape(-1)[entries]]
    vocab = max(vocab, int(ids.max()) + 1)
    order = np.argsort(token, kind="stable")
    offsets = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(np.bincount(token, minlength=vocab), out=offsets[1:])
    if state.active.max() >= 2**31:
        raise UsageError("a corpus has 2**31 tokens or more; use a smaller --tokens")
    return {
        "text.safetensors": {"ids": ids, "row_corpus": text.row_corpus.numpy().astype(np.int32)},
        "experts.safetensors": {"top_weight": top_w, "top_position": top_p.astype(store.index_dtype(ids.size)),
                                "active": state.active.cpu().numpy().astype(np.int32),
                                "usage": state.usage.cpu().numpy().astype(np.float32)},
        "index.safetensors": {"offsets": offsets,
                              "entries": entries[order].astype(store.index_dtype(top_w.size))},
    }
