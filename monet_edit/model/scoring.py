"""Token streams and held-out loss, shared by training, profiling, evaluation and selection.

Documents are encoded (BOS first, EOS last), concatenated into one stream and cut into rows of
`seq_len + 1` tokens; a row scores its last `seq_len` positions. Results are sums (negative log
likelihood, correct predictions, tokens) so shards and batches add exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

FLOOR_REL = 0.001  # selectivity: the others' mean loss rise counts as at least 0.1% of their mean loss


def selectivity(target_delta: float, others_delta: float, others_loss: float) -> float:
    """Target loss rise / max(others' mean rise, FLOOR_REL x their mean loss): never infinite or
    undefined, and about 0 for an edit that does nothing."""
    return target_delta / max(others_delta, FLOOR_REL * others_loss)


def token_stream(tokenizer, docs: list[dict], max_tokens: int | None = None) -> list[int]:
    """The documents' tokens in order (BOS ... EOS per document), cut at `max_tokens`."""
    out: list[int] = []
    for doc in docs:
        ids = tokenizer.encode(doc["text"])
        if tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
        out.extend(ids)
        if max_tokens is not None and len(out) >= max_tokens:
            return out[:max_tokens]
    return out


def doc_stream(tokenizer, docs: list[dict], max_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """token_stream's tokens and, for each, the index of the document it comes from."""
    ids: list[int] = []
    owner: list[int] = []
    for at, doc in enumerate(docs):
        tok = tokenizer.encode(doc["text"])
        if tokenizer.eos_id is not None:
            tok.append(tokenizer.eos_id)
        ids.extend(tok)
        owner.extend([at] * len(tok))
        if max_tokens is not None and len(ids) >= max_tokens:
            return ids[:max_tokens], owner[:max_tokens]
    return ids, owner


def rows(stream: list[int], seq_len: int, name: str = "corpus") -> torch.Tensor:
    """[N, seq_len + 1] rows of the stream (the tail shorter than a row is dropped)."""
    import torch

    n = len(stream) // (seq_len + 1)
    if n == 0:
        raise UsageError(f"{name}: {len(stream)} tokens, fewer than one row of {seq_len + 1}")
    return torch.tensor(stream[: n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


@dataclass
class LossSums:
    """Additive next-token statistics: mean loss = nll / tokens, accuracy = correct / tokens."""

    nll: float = 0.0
    correct: int = 0
    tokens: int = 0

    def __add__(self, other: LossSums) -> LossSums:
        return LossSums(self.nll + other.nll, self.correct + other.correct, self.tokens + other.tokens)

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else float("nan")

    def to_dict(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "tokens": self.tokens, "nll": self.nll,
                "correct": self.correct}


def loss_sums(model, batch_rows: torch.Tensor, batch_size: int = 8) -> LossSums:
    """Next-token negative log likelihood and accuracy over rows [N, L+1]."""
    import torch

    with torch.inference_mode():
        return _loss_sums(model, batch_rows, batch_size)


def _loss_sums(model, batch_rows: torch.Tensor, batch_size: int) -> LossSums:
    import torch.nn.functional as F

    total = LossSums()
    device = next(model.parameters()).device
    for start in range(0, batch_rows.shape[0], batch_size):
        chunk = batch_rows[start:start + batch_size].to(device)
        logits = model(chunk[:, :-1]).logits.float()
        target = chunk[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
        correct = (logits.argmax(-1) == target).sum()
        total = total + LossSums(float(nll), int(correct), target.numel())
    return total


def doc_loss_sums(model, batch_rows: torch.Tensor, owners: torch.Tensor, docs: int, batch_size: int = 8,
                  ) -> dict[str, torch.Tensor]:
    """Per document: nll (float64), correct and tokens (int64) of the scored positions of rows
    [N, L+1], each position credited to the document of the token it predicts (`owners`, same
    shape as the rows). Sums, so rows dealt to several ranks add up."""
    import torch

    with torch.inference_mode():
        return _doc_loss_sums(model, batch_rows, owners, docs, batch_size)


def _doc_loss_sums(model, batch_rows, owners, docs: int, batch_size: int) -> dict:
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    out = {"nll": torch.zeros(docs, dtype=torch.float64), "correct": torch.zeros(docs, dtype=torch.long),
           "tokens": torch.zeros(docs, dtype=torch.long)}
    for start in range(0, batch_rows.shape[0], batch_size):
        chunk = batch_rows[start:start + batch_size].to(device)
        logits = model(chunk[:, :-1]).logits.float()
        target = chunk[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        who = owners[start:start + batch_size, 1:].reshape(-1)
        out["nll"].index_add_(0, who, nll.double().cpu())
        out["correct"].index_add_(0, who, (logits.argmax(-1) == target).reshape(-1).long().cpu())
        out["tokens"].index_add_(0, who, torch.ones_like(who))
    return out
