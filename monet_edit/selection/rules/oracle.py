"""oracle (a diagnostic, not an edit to ship): the best mask this model allows, found by looking
at the out-of-source eval sets that every other rule is forbidden to see.

Candidates: the experts ranked by their predicted selective damage on those sets (attribution:
effect on the target's out-of-source set minus the mean effect on the references' out-of-source
sets), the top n for n on a grid of steps of sqrt(2) up to MAX_MASKED of the experts; and what
the profile rules select over their parameter grids (skew at ratios 1 to 3, contrastive at 0.5%
to 2%), so the oracle is never worse than a rule. Each candidate is measured on the same sets;
the chosen one has the highest selectivity among those that raise the target's loss by at least
MIN_RISE (relative), else the largest rise. Its numbers bound what these masks can do on this
model: when the oracle cannot reach a goal, the model is the limit, not the choice of rule.
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

    return (target, rows(open_corpus(target, for_eval=True).load("eval"), target),
            rows(interleave([open_corpus(o, for_eval=True).load("eval") for o in others if not o.startswith("retain@")]),
                 "references' out-of-source sets"))


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
    trials, kept = [], []  # kept[i]: the masks of trials[i]
    try:
        for label, masks in _candidates(ctx, order, n_max, gain.shape):
            experts = int(sum(int(m.sum()) for m in masks.values()))
            if not experts or experts > max_masked * flat.numel():  # within the oracle's budget
                continue
            model.set_masks(masks_mod.combine({g: m.cpu() for g, m in existing.items()}, masks))
            dt = scoring.loss_sums(model, t_rows, ctx.batch_size).loss - base_t
            dr = scoring.loss_sums(model, r_rows, ctx.batch_size).loss - base_r
            trials.append({"candidate": label, "experts": experts, "target_rise": dt / base_t,
                           "retain_rise": dr / base_r, "selectivity": scoring.selectivity(dt, dr, base_r)})
            kept.append(masks)
    finally:
        model.set_masks(existing)
    reached = [i for i, t in enumerate(trials) if t["target_rise"] >= min_rise]
    pool = reached or range(len(trials))
    best = max(pool, key=lambda i: trials[i]["selectivity" if reached else "target_rise"], default=None)
    masks = kept[best] if best is not None else as_masks(torch.zeros_like(gain, dtype=torch.bool))
    params = {"min_rise": min_rise, "max_masked": max_masked, "target_set": name, "trials": trials,
              "candidate": None if best is None else trials[best]["candidate"],
              "diagnostic": "chosen by looking at the out-of-source eval sets: an upper bound, not an edit to ship"}
    return Choice(masks, params, trials)


SKEW_RATIOS = (1.0, 1.25, 1.5, 2.0, 3.0)
CONTRASTIVE_FRACTIONS = (0.005, 0.01, 0.02)


def _candidates(ctx: Context, order, n_max: int, shape):
    """(label, masks) of every candidate: the attribution ranking's top n on a sqrt(2) grid, then
    the profile rules over their grids."""
    import torch

    from .attribution import top_fraction
    from .contrastive import contrast
    from .skew import skew

    n, sizes = 1.0, []
    while round(n) <= n_max:
        if not sizes or round(n) != sizes[-1]:
            sizes.append(round(n))
        n *= 2 ** 0.5
    if n_max and sizes[-1:] != [n_max]:
        sizes.append(n_max)
    for count in sizes:
        picked = torch.zeros(order.numel(), dtype=torch.bool)
        picked[order[:count]] = True
        yield "attribution ranking", as_masks(picked.view(shape))
    for ratio in SKEW_RATIOS:
        yield f"skew ratio {ratio:g}", skew(ctx.target, ctx.others, ratio)
    delta = contrast(ctx.target, ctx.others)
    for fraction in CONTRASTIVE_FRACTIONS:
        yield f"contrastive {fraction:.1%}", top_fraction(delta, delta > 0, fraction)


RULE = Rule(
    name="oracle",
    help="diagnostic: the most selective mask found by looking at the out-of-source eval sets",
    params=(MIN_RISE, MAX_MASKED),
    select=_select,
    score=usage_score,
    needs_model=True,
)
