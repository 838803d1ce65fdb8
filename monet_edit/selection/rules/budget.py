"""budget (ours): rank experts by log((s_D + eps) / (max_other + eps)), mask the top n for n on a
doubling grid, measure the held-out loss of target and retain documents (the held-out part of the
PROFILE split, never the eval split), and keep the n with the largest target loss rise whose retain
loss rise is within the budget. The search stops at the first n over budget (retain damage grows
with n) and never masks more than MAX_FRACTION of the experts."""

from __future__ import annotations

import math

from ...errors import UsageError
from ...infra.params import Param
from ...model import masks as masks_mod
from . import (
    Choice,
    Context,
    Rule,
    Score,
    as_masks,
    check_same_model,
    interleave,
    profile_docs,
    reference_max,
)

MAX_FRACTION = 0.05  # the budget rule never masks more than this share of a model's experts
HELD_OUT_TOKENS = 20_000  # tokens of held-out text per side (target, retain) each trial scores

RETAIN_BUDGET = Param("retain_budget", float, 0.02,
                      "budget: allowed relative loss rise on retain documents (0.02 = 2%).",
                      lambda v: 0 <= v < 10, "a relative loss rise in [0, 10)")


def budget_score(target, others: list, eps: float | None = None):
    """log((s_D + eps) / (max_other + eps)) per expert; eps defaults to a tenth of uniform usage
    (every token's G sums to H over the E*E experts of a group)."""
    import torch

    if not others:
        raise UsageError("the budget rule needs reference profiles to rank experts against")
    check_same_model([target, *others])
    if eps is None:
        total = float(target.mean()[0].sum())
        eps = 0.1 * total / target.S[0].numel()
    return torch.log((target.mean() + eps) / (reference_max(others) + eps))


def _grid(n_max: int) -> list[int]:
    out, n = [], 1
    while n < n_max:
        out.append(n)
        n *= 2
    return out + [n_max] if n_max > 0 else []


def budget(model, tokenizer, target_docs: list[dict], retain_docs: list[dict], target, others: list, *,
           retain_budget: float = 0.02, seq_len: int = 256, batch_size: int = 8,
           max_tokens: int = HELD_OUT_TOKENS, max_fraction: float = MAX_FRACTION, eps: float | None = None,
           trace: list | None = None) -> dict:
    """The largest target damage within a relative retain-loss budget (module docstring).

    `model` is left as it was found; `trace`, when given, receives one dict per tried count:
    experts, target and retain loss and relative rise."""
    import torch

    from ...model import scoring

    RETAIN_BUDGET.validate(retain_budget)
    score = budget_score(target, others, eps)
    G, E = score.shape[0], score.shape[1]
    flat = score.reshape(-1)
    order = flat.argsort(descending=True, stable=True)
    n_max = min(int((flat > 0).sum()), int(max_fraction * flat.numel()))
    t_rows = scoring.rows(scoring.token_stream(tokenizer, target_docs, max_tokens), seq_len, "target held-out")
    r_rows = scoring.rows(scoring.token_stream(tokenizer, retain_docs, max_tokens), seq_len, "retain held-out")
    existing = model.masks()
    base_t = scoring.loss_sums(model, t_rows, batch_size).loss
    base_r = scoring.loss_sums(model, r_rows, batch_size).loss
    tried = [{"experts": 0, "target_loss": base_t, "retain_loss": base_r, "target_rise": 0.0, "retain_rise": 0.0}]
    best: tuple[float, int] = (0.0, 0)

    def top(count: int) -> dict:
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[order[:count]] = True
        return as_masks(chosen.view(G, E, E))

    try:
        for count in _grid(n_max):
            model.set_masks(masks_mod.combine({g: m.cpu() for g, m in existing.items()}, top(count)))
            loss_t = scoring.loss_sums(model, t_rows, batch_size).loss
            loss_r = scoring.loss_sums(model, r_rows, batch_size).loss
            rise_t, rise_r = loss_t / base_t - 1.0, loss_r / base_r - 1.0
            tried.append({"experts": count, "target_loss": loss_t, "retain_loss": loss_r,
                          "target_rise": rise_t, "retain_rise": rise_r})
            if rise_r > retain_budget:
                break
            if rise_t > best[0]:
                best = (rise_t, count)
    finally:
        model.set_masks(existing)
    if trace is not None:
        trace.extend(tried)
    return top(best[1])


def _select(ctx: Context, retain_budget: float) -> Choice:
    toxic = ctx.target.meta.get("corpus_kind") == "toxicity"
    trace: list[dict] = []
    masks = budget(ctx.load_model(), ctx.checkpoint.tokenizer, profile_docs(ctx.target.meta, "holdout", toxic_only=toxic),
                   interleave([profile_docs(p.meta, "holdout") for p in ctx.others]), ctx.target, ctx.others,
                   retain_budget=retain_budget, seq_len=ctx.seq_len, batch_size=ctx.batch_size, trace=trace)
    params = {"retain_budget": retain_budget, "held_out_tokens": HELD_OUT_TOKENS, "seq_len": ctx.seq_len,
              "max_fraction": MAX_FRACTION, "held_out": "profile split, held-out documents (never eval)",
              "target_docs": "toxic (label >= 0.5)" if toxic else "all", "trials": trace}
    return Choice(masks, params, trace)


def score(target, references: list, params: dict, masks: dict | None) -> Score:
    """The ranking score; it masks the top n, so the line is drawn at the lowest masked score."""
    import torch

    used = target.mean() > 0
    values = budget_score(target, references).float().masked_fill(~used, math.nan)
    picked = values[torch.stack([masks[g] for g in range(values.shape[0])])] if masks else values[:0]
    picked = picked[~picked.isnan()]
    threshold = float(picked.min()) if picked.numel() else None
    return Score(values, "log((s_target + eps) / (max reference s + eps))", threshold, "lowest masked score")


RULE = Rule(
    name="budget",
    help="the most damaging top-n experts whose held-out retain loss rise stays within RETAIN_BUDGET",
    params=(RETAIN_BUDGET,),
    select=_select,
    score=score,
    needs_model=True,
)
