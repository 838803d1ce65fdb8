"""How specific each expert is to the target: the score the selection rule used, per group.

Each rule draws its own score (selection/rules: skew the log10 usage ratio with the line at
log10(ratio), corr the Pearson r with the line at the threshold, budget its ranking score with the
line at the lowest masked score). Without a rule: the skew ratio when there are references, the
Pearson r for a lone labelled profile, else log10 mean routing weight with no threshold. Experts
the target never routes to are NaN (drawn blank) for every score but corr.
"""

from __future__ import annotations

import math

import torch

from ..selection import rules
from ..selection.rules import Score as Scores


def compute(rule: str | None, params: dict, target, references: list, masks: dict | None) -> Scores:
    """The scores for `rule` (None: what the profiles allow) from the target's profile."""
    if rule in rules.registry() and (references or not rules.get(rule).needs_references):
        return rules.get(rule).score(target, references, params, masks)
    if rule is None and target.labelled and not references:
        return rules.get("corr").score(target, references, params, masks)
    if references:
        return rules.get("skew").score(target, references, params if rule == "skew" else {}, masks)
    used = target.mean() > 0
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
