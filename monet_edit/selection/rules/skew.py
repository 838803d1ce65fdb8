"""skew (the paper's rule for domains and languages): mask expert e when the target uses it at
least `ratio` times more than any reference corpus does, s_e(D) >= ratio * max_{D' != D} s_e(D'),
s the mean routing weight per token, and s_e(D) > 0."""

from __future__ import annotations

import math

from ...errors import UsageError
from ...infra.params import Param
from . import Choice, Context, Rule, Score, as_masks, check_same_model, reference_max

CAP = 3.0  # log10 ratios are clipped to [-CAP, CAP] (1000x) for display

RATIO = Param("ratio", float, 2.0, "skew: mask experts used >= RATIO times more than by any reference.",
              lambda v: v >= 1, "a number >= 1", grid=(1.5, 2.0, 3.0, 5.0))


def skew(target, others: list, ratio: float = 2.0) -> dict:
    """Experts the target uses at least `ratio` times more than any reference corpus does."""
    if not others:
        raise UsageError("the skew rule needs reference profiles (the target's sibling corpora)")
    if not ratio >= 1.0 or not math.isfinite(ratio):
        raise UsageError(f"--ratio must be a number >= 1, got {ratio}")
    check_same_model([target, *others])
    s = target.mean()
    return as_masks((s >= ratio * reference_max(others)) & (s > 0))


def _select(ctx: Context, ratio: float) -> Choice:
    return Choice(skew(ctx.target, ctx.others, ratio), {"ratio": ratio})


def score(target, references: list, params: dict, masks: dict | None) -> Score:
    """log10(s_target / max reference s), clipped; the line at log10(ratio). Unused experts: NaN."""
    used = target.mean() > 0
    ratio = (target.mean() / reference_max(references)).log10().clamp(-CAP, CAP)
    ratio = ratio.float().masked_fill(~used, math.nan)
    given = params.get("ratio")
    return Score(ratio, f"log10(s_target / max reference s), clipped at ±{CAP:g}",
                 math.log10(given) if given else None, f"ratio {given:g}, log10" if given else "")


RULE = Rule(
    name="skew",
    help="experts the target uses RATIO times more than any reference",
    params=(RATIO,),
    select=_select,
    score=score,
    default_for=("domain", "language", "corpus"),
)
