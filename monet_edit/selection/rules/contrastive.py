"""contrastive (after SteerMoE, Fayyaz et al. 2025): mask the experts the target activates more
often than the references do. An expert's activation rate is the number of heads that activate
it per token (profiles count it); the score is rate(target) - mean over references of their rate
(each reference weighs the same), and the MAX_MASKED fraction of experts with the largest positive
score is masked."""

from __future__ import annotations

from . import Choice, Context, Rule, Score, check_same_model
from .attribution import MAX_MASKED, top_fraction


def contrast(target, others: list):
    """rate(target) - mean reference rate, [groups, E, E]."""
    import torch

    from ...errors import UsageError

    if not others:
        raise UsageError("the contrastive rule needs reference profiles")
    check_same_model([target, *others])
    return target.activation_rate() - torch.stack([p.activation_rate() for p in others]).mean(0)


def _select(ctx: Context, max_masked: float) -> Choice:
    delta = contrast(ctx.target, ctx.others)
    return Choice(top_fraction(delta, delta > 0, max_masked), {"max_masked": max_masked})


def score(target, references: list, params: dict, masks: dict | None) -> Score:
    import math

    import torch

    delta = contrast(target, references).float()
    picked = delta[torch.stack([masks[g] for g in range(delta.shape[0])])] if masks else delta[:0]
    threshold = float(picked.min()) if picked.numel() else None
    return Score(delta.masked_fill(target.mean() == 0, math.nan),
                 "activation rate on the target - mean rate on the references (heads per token)",
                 threshold, "lowest masked score")


RULE = Rule(
    name="contrastive",
    help="experts the target activates more often than the references (SteerMoE's risk difference)",
    params=(MAX_MASKED,),
    select=_select,
    score=score,
)
