"""attribution (ours): mask the experts whose removal is predicted, to first order, to hurt the
target most and the references least.

The prediction is the gradient of the loss with respect to a per-expert scale at 1 (selection/
attribution.py), on the target's and the references' profile-split text (never eval): removing
expert e changes the per-token loss by about d(e) = -dL/ds_e / tokens. Expert e is a candidate when
d_target(e) > 0 and d_target(e) >= EFFECT_RATIO x max(d_references(e), 0); the MAX_MASKED
fraction of experts with the largest d_target among the candidates is masked.
"""

from __future__ import annotations

from ...infra.params import Param
from . import Choice, Context, Rule, Score, as_masks, profile_text

TOKENS = 20_000  # tokens of text per side (target; the references, interleaved)

EFFECT_RATIO = Param("effect_ratio", float, 3.0,
                     "attribution: mask experts whose predicted removal effect on the target is at least "
                     "EFFECT_RATIO times the effect on the references.", lambda v: v >= 1, "a number >= 1",
                     grid=(2.0, 3.0, 5.0, 10.0))
MAX_MASKED = Param("max_masked", float, 0.02,
                   "attribution, contrastive: mask at most this fraction of all experts (the strongest).",
                   lambda v: 0 < v <= 0.5, "a fraction in (0, 0.5]")


def effects(ctx: Context, tokens: int = TOKENS):
    """(d_target, d_references): predicted per-token loss change of removing each expert, [G, E, E]."""
    from ..attribution import expert_gradients

    model = ctx.load_model()
    target_rows, retain_rows = profile_text(ctx, tokens)
    g_t, n_t = expert_gradients(model, target_rows, ctx.batch_size)
    g_r, n_r = expert_gradients(model, retain_rows, ctx.batch_size)
    return -g_t / n_t, -g_r / n_r


def top_fraction(score, candidates, fraction: float) -> dict:
    """The `fraction` of all experts with the highest score among `candidates`, as masks."""
    import torch

    flat = torch.where(candidates, score, torch.full_like(score, -torch.inf)).reshape(-1)
    count = min(int(candidates.sum()), int(fraction * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[flat.argsort(descending=True, stable=True)[:count]] = True
    return as_masks(chosen.view_as(score))


def _select(ctx: Context, effect_ratio: float, max_masked: float) -> Choice:
    d_t, d_r = ctx.cached("attribution", effects)
    candidates = (d_t > 0) & (d_t >= effect_ratio * d_r.clamp(min=0))
    masks = top_fraction(d_t, candidates, max_masked)
    return Choice(masks, {"effect_ratio": effect_ratio, "max_masked": max_masked, "tokens_per_side": TOKENS,
                          "text": "profile split (fit part) of the target; references interleaved"})


def score(target, references: list, params: dict, masks: dict | None) -> Score:
    """Without the model the report cannot recompute the gradients: it shows the masked experts
    on the target's usage (log10 mean routing weight)."""
    import math

    used = target.mean() > 0
    usage = target.mean().log10().float().masked_fill(~used, math.nan)
    return Score(usage, "log10 mean routing weight per token (attribution ranks by predicted effect)",
                 None, "", False)


RULE = Rule(
    name="attribution",
    help="experts whose removal is predicted (gradient of the loss w.r.t. a per-expert scale) to hurt "
         "the target EFFECT_RATIO times more than the references",
    params=(EFFECT_RATIO, MAX_MASKED),
    select=_select,
    score=score,
    needs_model=True,
)
