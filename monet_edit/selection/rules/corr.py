"""corr (the paper's rule for toxicity): mask expert e when the Pearson correlation between its
routing weight G_e(t) and the token label y(t) is at least `threshold`. Needs a labelled profile."""

from __future__ import annotations

from ...errors import UsageError
from ...infra.params import Param
from . import Choice, Context, Rule, Score, as_masks

THRESHOLD = Param("threshold", float, 0.1, "corr: mask experts whose Pearson r with the label >= this.",
                  lambda v: 0 < v <= 1, "in (0, 1]", grid=(0.05, 0.1, 0.2))


def corr(profile, threshold: float = 0.1) -> dict:
    """Experts whose routing weight correlates with the token label at r >= threshold."""
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"--threshold must be in (0, 1], got {threshold}")
    return as_masks(profile.pearson() >= threshold)


def _select(ctx: Context, threshold: float) -> Choice:
    return Choice(corr(ctx.target, threshold), {"threshold": threshold})


def score(target, references: list, params: dict, masks: dict | None) -> Score:
    threshold = params.get("threshold")
    return Score(target.pearson().float(), "Pearson r (routing weight vs token label)", threshold,
                 f"threshold r = {threshold}" if threshold is not None else "")


RULE = Rule(
    name="corr",
    help="experts whose routing weight correlates with the token label",
    params=(THRESHOLD,),
    select=_select,
    score=score,
    needs_labels=True,
    needs_references=False,
    default_for=("toxicity",),
)
