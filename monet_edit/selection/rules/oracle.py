"""oracle (a diagnostic, not an edit to ship): the best mask this model allows, found by looking
at the out-of-source eval sets that every other rule is forbidden to see.

Experts are ranked by their predicted selective damage on those sets (attribution: effect on the
target's out-of-source set minus the mean effect on the references' out-of-source sets), the top
n are masked for n on a doubling grid up to MAX_MASKED of the experts, and each mask is measured
on the same sets. The chosen n has the highest selectivity among those that raise the target's
loss by at least MIN_RISE (relative), else the largest rise. Its numbers bound what any mask can
do on this model: when the oracle cannot reach a goal, the model is the limit, not the rule.
"""

from __future__ import annotations

from ...errors import UsageError
from ...infra.params import Param
from . import Choice, Context, Rule, as_masks, interleave
from .attribution import MAX_MASKED
from .attribution import score as usage_score

TOKENS = 20_000

MIN_RISE = Param("min_rise", float, 0.03, "oracle: the relative target loss rise on its out-of-source set a "
                 "mask must reach.", lambda v: 0 < v < 10, "a relative rise in (0, 10)")


def _sets(ctx: Context):
    from ...corpora import oos_set as oos
    from ...corpora import open_corpus
    from ...model import scoring

    name = str(ctx.target.meta.get("corpus_ref") or ctx.target.meta.get("corpus"))
    target = oos(name)
    if target is None:
        raise UsageError(f"the oracle needs an out-of-source eval set for {name}, and there is none")
    others = [o for o in (oos(str(p.meta.get("corpus_ref") or p.meta.get("corpus"))) for p in ctx.others) if o]
    if not others:
        raise UsageError("the oracle needs out-of-source eval sets for the references, and there are none")
    tok = ctx.checkpoint.tokenizer

    def rows(docs, what):
        return scoring.rows(scoring.token_stream(tok, docs, TOKENS), ctx.seq_len, what)

    return (target, rows(open_corpus(target).load("eval"), target),
            rows(interleave([open_corpus(o).load("eval") for o in others]), "references' out-of-source sets"))


def _select(ctx: Context, min_rise: float, max_masked: float) -> Choice:
    import torch

    from ...model import masks as masks_mod
    from ...model import scoring
    from ..attribution import expert_gradients

    name, t_rows, r_rows = ctx.cached("oracle-sets", _sets)
    model = ctx.load_model()
    g_t, n_t = expert_gradients(model, t_rows, ctx.batch_size)
    g_r, n_r = expert_gradients(model, r_rows, ctx.batch_size)
    gain = (-g_t / n_t) - (-g_r / n_r)
    flat = gain.reshape(-1)
    order = flat.argsort(descending=True, stable=True)
    n_max = min(int((flat > 0).sum()), int(max_masked * flat.numel()))
    existing = model.masks()
    base_t = scoring.loss_sums(model, t_rows, ctx.batch_size).loss
    base_r = scoring.loss_sums(model, r_rows, ctx.batch_size).loss
    trials, count = [], 1

    def top(n: int) -> dict:
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[order[:n]] = True
        return as_masks(chosen.view_as(gain))

    try:
        while count <= n_max:
            model.set_masks(masks_mod.combine({g: m.cpu() for g, m in existing.items()}, top(count)))
            dt = scoring.loss_sums(model, t_rows, ctx.batch_size).loss - base_t
            dr = scoring.loss_sums(model, r_rows, ctx.batch_size).loss - base_r
            trials.append({"experts": count, "target_rise": dt / base_t, "retain_rise": dr / base_r,
                           "selectivity": scoring.selectivity(dt, dr, base_r)})
            count = count * 2 if count * 2 <= n_max or count == n_max else n_max
    finally:
        model.set_masks(existing)
    reached = [t for t in trials if t["target_rise"] >= min_rise]
    best = (max(reached, key=lambda t: t["selectivity"]) if reached
            else max(trials, key=lambda t: t["target_rise"], default={"experts": 0}))
    params = {"min_rise": min_rise, "max_masked": max_masked, "target_set": name, "trials": trials,
              "diagnostic": "chosen by looking at the out-of-source eval sets: an upper bound, not an edit to ship"}
    return Choice(top(best["experts"]), params, trials)


RULE = Rule(
    name="oracle",
    help="diagnostic: the most selective mask found by looking at the out-of-source eval sets",
    params=(MIN_RISE, MAX_MASKED),
    select=_select,
    score=usage_score,
    needs_model=True,
)
