"""Held-out loss and next-token accuracy of every corpus of the edit's kind, plus `general`.

Rows of eval-split tokens per corpus (never the profile split); loss sums are all-reduced over
ranks, so any number of ranks gives the one-process numbers.
"""

from __future__ import annotations

import math

from ...infra.params import Param, at_least
from . import Suite, rel

EPS = 1e-6  # nats: the others' mean loss rise below this is "no rise" for selectivity


def corpora(target) -> list[str]:
    """Corpora scored: the target, its references (siblings of the same kind), then general."""
    return list(dict.fromkeys([*target.corpora, "general"]))


def _load(target, params, tokenizer, seq_len: int) -> tuple[dict, dict[str, str]]:
    from ...corpora import open_corpus
    from ...model.scoring import rows, token_stream

    data, fingerprints = {}, {}
    for name in corpora(target):
        built = open_corpus(name, user=target.kind == "corpus" and name == target.name)
        fingerprints[name] = built.fingerprint
        stream = token_stream(tokenizer, built.load("eval"), params.tokens)
        data[name] = rows(stream, seq_len, f"{name} (eval split)")
    return data, fingerprints


def _run(model, tokenizer, data: dict, params, group) -> dict:
    import torch

    from ...model.scoring import LossSums, loss_sums

    out = {}
    for name, batch_rows in data.items():
        mine = torch.tensor(group.take(batch_rows.shape[0], params.batch_size), dtype=torch.long)
        local = loss_sums(model, batch_rows[mine], params.batch_size)
        nll, correct, tokens = group.sum_numbers([local.nll, local.correct, local.tokens])
        out[name] = LossSums(nll, int(correct), int(tokens)).to_dict()
    return out


def selectivity(target: float, others: float | None) -> tuple[float | None, str | None]:
    """Target loss rise / the others' mean rise, with a note when that ratio is not finite."""
    if others is None:
        return None, "selectivity undefined: no sibling corpora to compare with"
    if others > EPS:
        return target / others, None
    if target > EPS:
        return math.inf, f"selectivity is inf: the others' mean loss delta ({others:.3g}) does not exceed {EPS:g}"
    return None, "selectivity undefined: neither the target nor the others' loss rose"


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _summarise(target_name: str, loss: dict) -> tuple[dict, list[str]]:
    def delta(name: str, key: str) -> float:
        return loss[name]["after"][key] - loss[name]["before"][key]

    others = [n for n in loss if n not in (target_name, "general")]
    before = loss[target_name]["before"]["loss"]
    out = {"target_loss_before": before, "target_loss_after": loss[target_name]["after"]["loss"],
           "target_loss_delta": delta(target_name, "loss"),
           "others_loss_delta": _mean([delta(n, "loss") for n in others]),
           "target_accuracy_delta": delta(target_name, "accuracy"),
           "others_accuracy_delta": _mean([delta(n, "accuracy") for n in others]),
           "general_loss_delta": delta("general", "loss")}
    out["target_loss_rel"] = rel(out["target_loss_delta"], before)
    out["general_loss_rel"] = rel(out["general_loss_delta"], loss["general"]["before"]["loss"])
    out["selectivity"], note = selectivity(out["target_loss_delta"], out["others_loss_delta"])
    return out, [note] if note else []


SUITE = Suite(
    name="loss",
    help="held-out loss and next-token accuracy per corpus",
    metrics={
        "target_loss_before": "held-out loss on the target, base model",
        "target_loss_after": "held-out loss on the target, edited model",
        "target_loss_delta": "target loss after - before",
        "target_loss_rel": "target loss delta / before",
        "others_loss_delta": "mean loss delta over the target's sibling corpora",
        "selectivity": "target_loss_delta / others_loss_delta (inf when others do not rise)",
        "target_accuracy_delta": "next-token accuracy delta on the target",
        "others_accuracy_delta": "mean next-token accuracy delta over the siblings",
        "general_loss_delta": "loss delta on the general mixture",
        "general_loss_rel": "general loss delta / before",
    },
    params=(Param("tokens", int, 20_000, "Eval tokens per corpus (loss suite).", at_least(1), "at least 1"),),
    default_for=("domain", "language", "toxicity", "corpus"),
    load=_load,
    run=_run,
    describe=lambda data, params: f"{len(data)} corpora, {sum(r[:, 1:].numel() for r in data.values()):,} tokens",
    summarise=_summarise,
)
