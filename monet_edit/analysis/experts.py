"""What an expert does: the tokens (with short contexts) that route to it most.

The routing weight of expert (i, j) in group g on token t is G_ij(t) = sum_h g1[h,i](t) g2[h,j](t)
(README: Design notes). We run the model over a corpus's tokens, keep the `top` occurrences with the
largest G_ij per expert, and show each with a few tokens either side, as the Monet authors'
expert viewer does. Shared by `monet-edit experts` and the report's table of masked experts.
Only the requested experts' weights are formed (an [N, H] product each), never all E*E.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..errors import UsageError

LEFT, RIGHT = 8, 3  # context tokens shown before and after a hit
VISIBLE = str.maketrans({"\n": "\u21b5", "\t": "\u2192", "\r": ""})


@dataclass
class Hit:
    """One token occurrence and its routing weight to the expert."""

    weight: float
    token: str
    token_id: int
    left: str
    right: str
    row: int
    position: int


@dataclass
class ExpertTokens:
    """The top occurrences of one expert over `scanned` tokens (weight descending)."""

    group: int
    i: int
    j: int
    scanned: int
    hits: list[Hit] = field(default_factory=list)

    def tokens(self) -> list[dict]:
        """Distinct tokens among the hits, in rank order, with how many hits each has."""
        seen: dict[str, dict] = {}
        for hit in self.hits:
            entry = seen.setdefault(hit.token, {"token": hit.token, "hits": 0, "max_weight": hit.weight})
            entry["hits"] += 1
        return list(seen.values())

    def to_dict(self) -> dict:
        return {"group": self.group, "i": self.i, "j": self.j, "scanned": self.scanned,
                "tokens": self.tokens(), "hits": [asdict(h) for h in self.hits]}


def visible(text: str) -> str:
    """Newlines and tabs as visible arrows, so a context stays on one line."""
    return text.translate(VISIBLE)


def parse_expert(text: str, experts: int) -> tuple[int, int]:
    """'I,J' (sub-expert i on the g1 side, j on the g2 side), each in [0, E)."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise UsageError(f"--expert {text!r}: expected I,J (two integers, e.g. 3,17)")
    i, j = int(parts[0]), int(parts[1])
    if not (i < experts and j < experts):
        raise UsageError(f"--expert {text!r}: out of range (the model has {experts} sub-experts per side, "
                         f"0..{experts - 1})")
    return i, j


def check_experts(config, experts: list[tuple[int, int, int]]) -> None:
    """Every (group, i, j) exists in the model."""
    for g, i, j in experts:
        if not 0 <= g < config.num_groups:
            raise UsageError(f"--group {g}: out of range (the model has {config.num_groups} routing groups, "
                             f"0..{config.num_groups - 1})")
        if not (0 <= i < config.moe_experts and 0 <= j < config.moe_experts):
            raise UsageError(f"expert ({i},{j}): out of range (0..{config.moe_experts - 1} per side)")


def corpus_rows(tokenizer, corpus: str, *, tokens: int, seq_len: int, split: str = "profile"):
    """Rows [N, seq_len] of a corpus split's tokens (a registered name or a user corpus path),
    and the corpus's fingerprint."""
    from ..corpora import open_corpus
    from ..model.scoring import rows, token_stream

    built = open_corpus(corpus)
    stream = token_stream(tokenizer, built.load(split), tokens)
    return rows(stream, seq_len - 1, f"{corpus} ({split} split)"), built.fingerprint


def token_text(tokenizer, token_id: int) -> str:
    """A token as text; special tokens (which decode to nothing) by name."""
    text = tokenizer.decode([token_id])
    if text:
        return text
    names = {tokenizer.bos_id: "<s>", tokenizer.eos_id: "</s>"}
    return names.get(token_id, f"<{token_id}>")


def hit(tokenizer, row_ids: list[int], row: int, pos: int, weight: float) -> Hit:
    """The occurrence at `pos` of a row of token ids, with LEFT and RIGHT tokens of context."""
    return Hit(weight=weight, token=token_text(tokenizer, row_ids[pos]), token_id=row_ids[pos],
               left=tokenizer.decode(row_ids[max(0, pos - LEFT):pos]),
               right=tokenizer.decode(row_ids[pos + 1:pos + 1 + RIGHT]), row=row, position=pos)


@torch.inference_mode()
def top_tokens(model, tokenizer, batch_rows: torch.Tensor, experts: list[tuple[int, int, int]], *,
               top: int = 10, batch_size: int = 8) -> list[ExpertTokens]:
    """For each (group, i, j): the `top` token occurrences of `batch_rows` [N, T] with the largest
    routing weight G_ij (occurrences with weight 0 are never hits)."""
    check_experts(model.config, experts)
    device = next(model.parameters()).device
    T = batch_rows.shape[1]
    best = [(torch.empty(0), torch.empty(0, dtype=torch.long)) for _ in experts]
    for start in range(0, batch_rows.shape[0], batch_size):
        ids = batch_rows[start:start + batch_size].to(device)
        routing: list = []
        model.model(ids, routing=routing)
        for k, (g, i, j) in enumerate(experts):
            g1, g2 = routing[g]
            weight = (g1[..., i].float() * g2[..., j].float()).sum(-1).reshape(-1).cpu()
            values = torch.cat([best[k][0], weight])
            index = torch.cat([best[k][1], torch.arange(weight.numel()) + start * T])
            keep = values.topk(min(top, values.numel())).indices
            best[k] = (values[keep], index[keep])
    out = []
    for (g, i, j), (values, index) in zip(experts, best, strict=True):
        result = ExpertTokens(g, i, j, batch_rows.numel())
        for value, flat in zip(values.tolist(), index.tolist(), strict=True):
            if value <= 0:
                continue
            row, pos = divmod(flat, T)
            result.hits.append(hit(tokenizer, batch_rows[row].tolist(), row, pos, value))
        out.append(result)
    return out
