"""How specific each expert is to the target: the score the selection rule used, per group.

- skew: log10(s_target / max_reference s), s the mean routing weight per token; the rule masks
  experts at or above log10(ratio). Experts the references never use are shown at +CAP.
- corr: Pearson r of the expert's routing weight with the token label; threshold as given.
- budget: the rule's ranking score log((s_target + eps) / (max_reference + eps)); it masks the
  top n experts, so the line is drawn at the lowest masked score.
- no rule and no references (a lone profile): log10 mean routing weight, no threshold.
Experts the target never routes to are NaN (drawn blank) for every score but corr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..selection import select as selection

CAP = 3.0  # log10 ratios are clipped to [-CAP, CAP] (1000x) for display


@dataclass
class Scores:
    values: torch.Tensor  # [groups, E, E] float, NaN where undefined
    label: str
    threshold: float | None
    threshold_label: str
    diverging: bool  # centred at zero (ratios, correlations) or sequential (usage)


def compute(rule: str | None, params: dict, target, references: list, masks: dict | None) -> Scores:
    """The scores for `rule` (None: what the profiles allow) from the target's profile."""
    used = target.mean() > 0
    if rule == "corr" or (rule is None and target.labelled and not references):
        threshold = params.get("threshold")
        return Scores(target.pearson().float(), "Pearson r (routing weight vs token label)",
                      threshold, f"threshold r = {threshold}" if threshold is not None else "", True)
    if rule == "budget" and references:
        score = selection.budget_score(target, references).float().masked_fill(~used, math.nan)
        picked = score[torch.stack([masks[g] for g in range(score.shape[0])])] if masks else score[:0]
        picked = picked[~picked.isnan()]
        threshold = float(picked.min()) if picked.numel() else None
        return Scores(score, "log((s_target + eps) / (max reference s + eps))", threshold,
                      "lowest masked score", True)
    if references:
        ratio = (target.mean() / selection.reference_max(references)).log10().clamp(-CAP, CAP)
        ratio = ratio.float().masked_fill(~used, math.nan)
        given = params.get("ratio") if rule == "skew" else None
        return Scores(ratio, f"log10(s_target / max reference s), clipped at ±{CAP:g}",
                      math.log10(given) if given else None, f"ratio {given:g}, log10" if given else "", True)
    usage = target.mean().log10().float().masked_fill(~used, math.nan)
    return Scores(usage, "log10 mean routing weight per token (no references)", None, "", False)


def ranking(scores: Scores | None, target, masks: dict | None, count: int) -> list[tuple[int, int, int]]:
    """Up to `count` experts (group, i, j) for the table: masked experts by how much the target uses
    them (the masked experts it relied on most), or without masks the most specific experts (score,
    ties by usage). Experts without a score or usage are left out."""
    shape = scores.values.shape if scores is not None else (len(masks), *next(iter(masks.values())).shape)
    usage = target.mean().double().reshape(-1) if target is not None else torch.zeros(shape).double().reshape(-1)
    if masks:
        chosen = torch.stack([masks[g] for g in range(shape[0])]).reshape(-1)
        key = usage.masked_fill(~chosen, -math.inf)
        order = key.argsort(descending=True, stable=True)
    else:
        key = torch.nan_to_num(scores.values.double().reshape(-1), nan=-math.inf)
        by_usage = usage.argsort(descending=True, stable=True)
        order = by_usage[key[by_usage].argsort(descending=True, stable=True)]
    E = shape[1]
    order = [int(f) for f in order[:count] if key[f] > -math.inf]
    return [(f // (E * E), f % (E * E) // E, f % E) for f in order]
