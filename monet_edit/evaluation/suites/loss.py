"""Held-out loss and next-token accuracy of every corpus the edit is judged on, in-source and
out-of-source, with bootstrap intervals over documents.

In-source: the eval splits of the target, its references and `general` (the same sources as the
profiles, never the same documents). Out-of-source: for the target and each reference, an eval
set from another source than its profile data (corpora: `NAME@oos`), which no profile, selection
or training ever reads. Loss sums are kept per document and all-reduced over ranks, so any number
of ranks gives the one-process numbers and the intervals resample documents.

Selectivity = target loss rise / the others' mean loss rise, the denominator floored at
FLOOR_REL of the others' mean loss (a rise that small is noise): it is never infinite or
undefined, and an edit that does nothing scores about 0.
"""

from __future__ import annotations

from ...corpora import oos_set as oos
from ...infra.params import Param, at_least
from ...model.scoring import FLOOR_REL, selectivity
from .. import bootstrap
from . import Suite

CI = ("target_loss_delta", "target_loss_rel", "others_loss_delta", "selectivity", "general_loss_rel",
      "oos_target_loss_delta", "oos_target_loss_rel", "oos_others_loss_delta", "oos_selectivity")


def corpora_for(target) -> dict[str, list[str]]:
    """{"in": target, references, general; "oos": their out-of-source sets that exist}."""
    inside = list(dict.fromkeys([*target.corpora, "general"]))
    outside = [o for o in (oos(n) for n in target.corpora) if o is not None]
    return {"in": inside, "oos": list(dict.fromkeys(outside))}


def _load(target, params, tokenizer, seq_len: int) -> tuple[dict, dict[str, str]]:
    import torch

    from ...corpora import open_corpus
    from ...model.scoring import doc_stream, rows

    data, fingerprints = {}, {}
    names = corpora_for(target)
    for name in [*names["in"], *names["oos"]]:
        built = open_corpus(name, user=target.kind == "corpus" and name == target.name, for_eval=True)
        fingerprints[name] = built.fingerprint
        docs = built.load("eval")
        if name.startswith("retain@"):  # the broad retain set without the target's own share
            docs = [d for d in docs if d.get("target") != target.name]
        ids, owner = doc_stream(tokenizer, docs, params.tokens)
        batch = rows(ids, seq_len, f"{name} (eval split)")
        owners = torch.tensor(owner[: batch.numel()], dtype=torch.long).view_as(batch)
        data[name] = (batch, owners, int(owners.max()) + 1)
    return data, fingerprints


def _run(model, tokenizer, data: dict, params, group) -> dict:
    import torch

    from ...model.scoring import doc_loss_sums

    out = {}
    for name, (batch, owners, docs) in data.items():
        mine = torch.tensor(group.take(batch.shape[0], params.batch_size), dtype=torch.long)
        local = doc_loss_sums(model, batch[mine], owners[mine], docs, params.batch_size)
        nll, correct, tokens = group.sum([local["nll"], local["correct"], local["tokens"]])
        kept = tokens > 0  # documents cut off by the token cap
        nll, correct, tokens = nll[kept], correct[kept].long(), tokens[kept].long()
        total = int(tokens.sum())
        out[name] = {"loss": float(nll.sum()) / total, "accuracy": int(correct.sum()) / total, "tokens": total,
                     "nll": float(nll.sum()), "correct": int(correct.sum()),
                     "docs": {"nll": nll.tolist(), "correct": correct.tolist(), "tokens": tokens.tolist()}}
    return out


class _Corpus:
    """One corpus's before/after per-document sums, resampled with its own seeded draw."""

    def __init__(self, name: str, entry: dict, draws: bootstrap.Draws) -> None:
        import numpy as np

        b, a = entry["before"]["docs"], entry["after"]["docs"]
        self.tokens = np.asarray(b["tokens"], dtype=np.float64)
        self.nll_b, self.nll_a = np.asarray(b["nll"]), np.asarray(a["nll"])
        self.acc_b, self.acc_a = np.asarray(b["correct"], float), np.asarray(a["correct"], float)
        self.idx = draws.indices(name, len(self.tokens))
        self.before, self.after = entry["before"]["loss"], entry["after"]["loss"]
        self.delta = self.after - self.before
        self.accuracy_delta = entry["after"]["accuracy"] - entry["before"]["accuracy"]

    def replicates(self) -> tuple:
        """(loss before, loss delta) per draw."""
        before = bootstrap.ratio(self.nll_b, self.tokens, self.idx)
        return before, bootstrap.ratio(self.nll_a, self.tokens, self.idx) - before


def _side(out: dict, prefix: str, target: _Corpus | None, others: list[_Corpus]) -> None:
    """Target and others' metrics with intervals, under `prefix` ("" in-source, "oos_" out)."""
    import numpy as np

    if target is None:
        return
    tb, td = target.replicates()
    bootstrap.with_interval(out, f"{prefix}target_loss_delta", target.delta, td)
    bootstrap.with_interval(out, f"{prefix}target_loss_rel", target.delta / target.before, td / tb)
    if not prefix:
        out["target_loss_before"], out["target_loss_after"] = target.before, target.after
        out["target_accuracy_delta"] = target.accuracy_delta
    if not others:
        for key in ("others_loss_delta", "selectivity"):
            bootstrap.with_interval(out, f"{prefix}{key}", None, None)
        return
    reps = [o.replicates() for o in others]
    od = float(np.mean([o.delta for o in others]))
    ol = float(np.mean([o.before for o in others]))
    od_r, ol_r = np.mean([d for _, d in reps], 0), np.mean([b for b, _ in reps], 0)
    bootstrap.with_interval(out, f"{prefix}others_loss_delta", od, od_r)
    bootstrap.with_interval(out, f"{prefix}selectivity", selectivity(target.delta, od, ol),
                            td / np.maximum(od_r, FLOOR_REL * ol_r))
    if not prefix:
        out["others_accuracy_delta"] = float(np.mean([o.accuracy_delta for o in others]))


def summarise(target_name: str, loss: dict, seed: int = 0) -> tuple[dict, list[str]]:
    draws = bootstrap.Draws(seed)
    corpora = {name: _Corpus(name, entry, draws) for name, entry in loss.items()}
    # sorted: the means over corpora then do not depend on the order the results were gathered in
    # (a resumed run reads one side from its journal), down to the last bit
    inside = sorted(n for n in corpora if not n.endswith("@oos"))
    outside = sorted(n for n in corpora if n.endswith("@oos"))
    out: dict = {}
    _side(out, "", corpora.get(target_name), [corpora[n] for n in inside if n not in (target_name, "general")])
    target_oos = oos(target_name)
    _side(out, "oos_", corpora.get(target_oos) if target_oos else None,
          [corpora[n] for n in outside if n != target_oos and not n.startswith("retain@")])
    general = corpora.get("general")
    if general is not None:
        gb, gd = general.replicates()
        out["general_loss_delta"] = general.delta
        bootstrap.with_interval(out, "general_loss_rel", general.delta / general.before, gd / gb)
    notes = [f"selectivity: target loss rise / max(others' mean rise, {FLOOR_REL:g} x their mean loss); "
             f"intervals: {bootstrap.LEVEL:.0%} bootstrap over documents ({bootstrap.REPLICATES} draws)"]
    if target_oos is None or target_oos not in corpora:
        notes.append(f"no out-of-source eval set for {target_name}: oos_ metrics not reported")
    return out, notes


SUITE = Suite(
    name="loss",
    help="held-out loss and next-token accuracy per corpus, in-source and out-of-source",
    metrics=bootstrap.described({
        "target_loss_before": "held-out loss on the target, base model",
        "target_loss_after": "held-out loss on the target, edited model",
        "target_loss_delta": "target loss after - before",
        "target_loss_rel": "target loss delta / before",
        "others_loss_delta": "mean loss delta over the reference corpora",
        "selectivity": f"target_loss_delta / max(others_loss_delta, {FLOOR_REL:g} x others' loss)",
        "target_accuracy_delta": "next-token accuracy delta on the target",
        "others_accuracy_delta": "mean next-token accuracy delta over the references",
        "general_loss_delta": "loss delta on the general mixture",
        "general_loss_rel": "general loss delta / before",
        "oos_target_loss_delta": "target loss delta on its out-of-source eval set",
        "oos_target_loss_rel": "out-of-source target loss delta / before",
        "oos_others_loss_delta": "mean loss delta over the references' out-of-source eval sets",
        "oos_selectivity": "selectivity on the out-of-source eval sets",
    }, CI),
    params=(Param("tokens", int, 20_000, "Eval tokens per corpus (loss suite).", at_least(1), "at least 1"),),
    default_for=("domain", "language", "toxicity", "corpus"),
    load=_load,
    run=_run,
    describe=lambda data, params: f"{len(data)} corpora, {sum(r[:, 1:].numel() for r, _, _ in data.values()):,} tokens",
    summarise=lambda target_name, loss: summarise(target_name, loss),
)
