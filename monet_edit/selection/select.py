"""Selection rules: which experts to mask, from profiles (DESIGN.md section 3).

- skew (paper; domains, languages): s_e(D) >= ratio * max_{D' != D} s_e(D') and s_e(D) > 0.
- corr (paper; toxicity): Pearson r between G_e(t) and the token label y(t) >= threshold.
- budget (ours): rank experts by log((s_D + eps) / (max_other + eps)), mask the top-n for n on a
  doubling grid, measure held-out loss of target and retain documents (held-out part of the
  PROFILE split, never the eval split), keep the n with the largest target loss rise whose retain
  loss rise is within the budget. The search stops at the first n over budget (retain damage
  grows with n).

Masks are {group: bool [E, E]} for every group of the model (True = masked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import chain, zip_longest
from pathlib import Path
from typing import Any

import torch

from .. import corpora, profiling
from ..errors import UsageError
from ..infra import provenance
from ..model import checkpoint, scoring
from ..model import masks as masks_mod
from ..profiling import Profile
from .targets import RULES, Target

MAX_FRACTION = 0.05  # the budget rule never masks more than this share of a model's experts
DRY_RUN_GRID = {"skew": ("ratio", (1.5, 2.0, 3.0, 5.0)), "corr": ("threshold", (0.05, 0.1, 0.2))}


def _check_same_model(profiles: list[Profile]) -> None:
    fps = {p.meta.get("model_fingerprint") for p in profiles}
    if len(fps) > 1:
        names = ", ".join(str(p.meta.get("corpus")) for p in profiles)
        raise UsageError(f"profiles ({names}) were made for different models; profile them with one --model")
    if len({tuple(p.S.shape) for p in profiles}) > 1:
        raise UsageError("profiles have different shapes (groups, experts); they come from different models")


def _as_masks(selected: torch.Tensor) -> dict[int, torch.Tensor]:
    return {g: selected[g].clone() for g in range(selected.shape[0])}


def reference_max(others: list[Profile]) -> torch.Tensor:
    """max over the reference corpora of the mean routing weight per token, [groups, E, E]."""
    return torch.stack([p.mean() for p in others]).amax(0)


def skew(target: Profile, others: list[Profile], ratio: float = 2.0) -> dict[int, torch.Tensor]:
    """Experts the target uses at least `ratio` times more than any reference corpus does."""
    if not others:
        raise UsageError("the skew rule needs reference profiles (the target's sibling corpora)")
    if not ratio >= 1.0 or not math.isfinite(ratio):
        raise UsageError(f"--ratio must be a number >= 1, got {ratio}")
    _check_same_model([target, *others])
    s = target.mean()
    rest = reference_max(others)
    return _as_masks((s >= ratio * rest) & (s > 0))


def corr(profile: Profile, threshold: float = 0.1) -> dict[int, torch.Tensor]:
    """Experts whose routing weight correlates with the token label at r >= threshold."""
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"--threshold must be in (0, 1], got {threshold}")
    return _as_masks(profile.pearson() >= threshold)


def budget_score(target: Profile, others: list[Profile], eps: float | None = None) -> torch.Tensor:
    """log((s_D + eps) / (max_other + eps)) per expert; eps defaults to a tenth of uniform usage
    (every token's G sums to H over the E*E experts of a group)."""
    if not others:
        raise UsageError("the budget rule needs reference profiles to rank experts against")
    _check_same_model([target, *others])
    if eps is None:
        total = float(target.mean()[0].sum())
        eps = 0.1 * total / target.S[0].numel()
    rest = reference_max(others)
    return torch.log((target.mean() + eps) / (rest + eps))


def _grid(n_max: int) -> list[int]:
    out, n = [], 1
    while n < n_max:
        out.append(n)
        n *= 2
    return out + [n_max] if n_max > 0 else []


def budget(
    model_source,
    target_docs: list[dict],
    retain_docs: list[dict],
    target: Profile,
    others: list[Profile],
    *,
    retain_budget: float = 0.02,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens: int = 20_000,
    max_fraction: float = MAX_FRACTION,
    eps: float | None = None,
    trace: list | None = None,
) -> dict[int, torch.Tensor]:
    """The largest target damage within a relative retain-loss budget (module docstring).

    model_source: a loaded model (kept unchanged) or anything load_model accepts. `trace`, when
    given, receives one dict per tried count: experts, target and retain loss and relative rise.
    """
    from ..model.loading import load_model, load_tokenizer

    if not 0.0 <= retain_budget < 10.0:
        raise UsageError(f"--retain-budget must be a relative loss rise in [0, 10), got {retain_budget}")
    model = model_source if isinstance(model_source, torch.nn.Module) else load_model(model_source)
    tokenizer = load_tokenizer(model.source)
    score = budget_score(target, others, eps)
    G, E = score.shape[0], score.shape[1]
    flat = score.reshape(-1)
    order = flat.argsort(descending=True, stable=True)
    positive = int((flat > 0).sum())
    n_max = min(positive, int(max_fraction * flat.numel()))
    t_rows = scoring.rows(
        scoring.token_stream(tokenizer, target_docs, max_tokens), seq_len, "target held-out"
    )
    r_rows = scoring.rows(
        scoring.token_stream(tokenizer, retain_docs, max_tokens), seq_len, "retain held-out"
    )
    existing = model.masks()
    base_t = scoring.loss_sums(model, t_rows, batch_size).loss
    base_r = scoring.loss_sums(model, r_rows, batch_size).loss
    best: tuple[float, int] = (0.0, 0)
    try:
        for count in _grid(n_max):
            chosen = torch.zeros(flat.numel(), dtype=torch.bool)
            chosen[order[:count]] = True
            candidate = _as_masks(chosen.view(G, E, E))
            model.set_masks({g: m | existing[g].cpu() if g in existing else m for g, m in candidate.items()})
            loss_t = scoring.loss_sums(model, t_rows, batch_size).loss
            loss_r = scoring.loss_sums(model, r_rows, batch_size).loss
            rise_t, rise_r = loss_t / base_t - 1.0, loss_r / base_r - 1.0
            if trace is not None:
                trace.append(
                    {
                        "experts": count,
                        "target_loss": loss_t,
                        "retain_loss": loss_r,
                        "target_rise": rise_t,
                        "retain_rise": rise_r,
                    }
                )
            if rise_r > retain_budget:
                break
            if rise_t > best[0]:
                best = (rise_t, count)
    finally:
        model.set_masks(existing)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[order[: best[1]]] = True
    if trace is not None:
        trace.insert(
            0,
            {
                "experts": 0,
                "target_loss": base_t,
                "retain_loss": base_r,
                "target_rise": 0.0,
                "retain_rise": 0.0,
            },
        )
    return _as_masks(chosen.view(G, E, E))


# ---------------------------------------------------------------------------- mask files


def fraction(masks: dict, config) -> float:
    return sum(masks_mod.counts(masks, config)) / (config.num_experts * config.num_groups)


def write_mask(
    path: str | Path,
    masks: dict,
    config,
    *,
    rule: str,
    params: dict,
    model_fingerprint: str,
    sources: dict,
    target: str | None = None,
) -> Path:
    """Write a mask file whose metadata records the rule, parameters, sources and provenance
    (masks.save adds per-group counts)."""
    meta = {
        "rule": rule,
        "target": target,
        "params": params,
        "model_fingerprint": model_fingerprint,
        "sources": sources,
        "masked": sum(masks_mod.counts(masks, config)),
        "fraction": fraction(masks, config),
        "total_experts": config.num_experts * config.num_groups,
        "provenance": provenance.record(),
    }
    return masks_mod.save(path, masks, config, meta)


def load_mask(path: str | Path, config, model_fingerprint: str | None = None) -> tuple[dict, dict]:
    """A mask file that fits the model (shape, groups) and, if it records one, its fingerprint."""
    loaded, meta = masks_mod.load(path, config)
    made_for = meta.get("model_fingerprint")
    if model_fingerprint is not None and made_for is not None and made_for != model_fingerprint:
        raise UsageError(
            f"{path}: mask was made for another model (fingerprint {str(made_for)[:12]}, "
            f"this model is {model_fingerprint[:12]})"
        )
    return loaded, meta


# ---------------------------------------------------------------------------- orchestration


@dataclass
class Selection:
    """A rule's result with everything write_mask records."""

    masks: dict[int, torch.Tensor]
    rule: str
    params: dict[str, Any]
    sources: dict[str, Any]
    model_fingerprint: str
    target: str
    trace: list[dict] = field(default_factory=list)

    def counts(self, config) -> list[int]:
        return masks_mod.counts(self.masks, config)

    def write(self, path: str | Path, config) -> Path:
        return write_mask(
            path,
            self.masks,
            config,
            rule=self.rule,
            params=self.params,
            model_fingerprint=self.model_fingerprint,
            sources=self.sources,
            target=self.target,
        )

    def meta(self, config) -> dict:
        """The metadata the mask file of this selection holds (for resect without a file)."""
        return {
            "rule": self.rule,
            "target": self.target,
            "params": self.params,
            "model_fingerprint": self.model_fingerprint,
            "sources": self.sources,
            "masked": sum(self.counts(config)),
            "fraction": fraction(self.masks, config),
            "counts": self.counts(config),
            "total_experts": config.num_experts * config.num_groups,
            "provenance": provenance.record(),
        }


@dataclass
class Inputs:
    """Profiles (target first) and where they came from."""

    target: Profile
    others: list[Profile]
    sources: dict[str, Any]


def _sources(paths: dict[str, Path], profiles: list[Profile]) -> dict[str, Any]:
    return {
        p.meta.get("corpus", str(path)): {
            "profile": str(path),
            "sha256": provenance.sha256_file(path),
            "corpus_fingerprint": p.meta.get("corpus_fingerprint"),
            "tokens": p.n,
        }
        for path, p in zip(paths.values(), profiles, strict=True)
    }


def target_inputs(
    model_source,
    target: Target,
    rule: str,
    *,
    tokens: int,
    seq_len: int,
    batch_size: int,
    profiles_dir: str | Path | None = None,
    device: Any = None,
    quiet: bool = False,
) -> Inputs:
    """Profiles for a target (computed or reused): the target's and, unless corr, its references'."""
    names = [target.name] if rule == "corr" else target.corpora
    paths = profiling.ensure_profiles(
        model_source,
        names,
        tokens=tokens,
        seq_len=seq_len,
        batch_size=batch_size,
        out_dir=profiles_dir,
        device=device,
        quiet=quiet,
    )
    return files_inputs(model_source, list(paths.values()))


def files_inputs(model_source, files: list[str | Path]) -> Inputs:
    """Profiles from files (the first is the target), validated against the model."""
    directory = checkpoint.resolve(model_source)
    config = checkpoint.load_config(directory)
    fp = checkpoint.model_fingerprint(directory)
    if not files:
        raise UsageError("give at least one --profile FILE (the target first, then its references)")
    profiles = [profiling.load(f, model_fingerprint=fp, config=config) for f in files]
    paths = {str(f): Path(f) for f in files}
    return Inputs(profiles[0], profiles[1:], _sources(paths, profiles))


def _holdout(name: str, fingerprint: str | None, *, toxic_only: bool = False) -> list[dict]:
    corpus = corpora.open_corpus(name)
    if fingerprint is not None and corpus.fingerprint != fingerprint:
        raise UsageError(
            f"corpus {name} changed since it was profiled (fingerprint {corpus.fingerprint[:12]}, "
            f"profile has {fingerprint[:12]}); profile it again"
        )
    _, held = corpora.split_profile_docs(corpus.load("profile"))
    return [d for d in held if d.get("label", 0.0) >= 0.5] if toxic_only else held


def _ref(meta: dict) -> str:
    """How to open a profile's corpus again: its registered name, or a user corpus's path."""
    return str(meta.get("corpus_ref") or meta.get("corpus", "target"))


def _interleave(doc_lists: list[list[dict]]) -> list[dict]:
    """Round-robin over corpora, so a token cap takes an equal share of each."""
    return [d for d in chain.from_iterable(zip_longest(*doc_lists)) if d is not None]


def apply_rule(
    model_source,
    inputs: Inputs,
    rule: str,
    *,
    ratio: float = 2.0,
    threshold: float = 0.1,
    retain_budget: float = 0.02,
    seq_len: int = 256,
    batch_size: int = 8,
    budget_tokens: int = 20_000,
    model=None,
) -> Selection:
    """Run one rule on profiles; `model` (already loaded) saves a reload for the budget rule."""
    if rule not in RULES:
        raise UsageError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    fp = inputs.target.meta.get("model_fingerprint", "")
    name = str(_ref(inputs.target.meta))
    trace: list[dict] = []
    if rule == "skew":
        masks, params = skew(inputs.target, inputs.others, ratio), {"ratio": ratio}
    elif rule == "corr":
        masks, params = corr(inputs.target, threshold), {"threshold": threshold}
    else:
        toxic = inputs.target.meta.get("corpus_kind") == "toxicity"
        target_docs = _holdout(name, inputs.target.meta.get("corpus_fingerprint"), toxic_only=toxic)
        retain_docs = _interleave(
            [_holdout(_ref(p.meta), p.meta.get("corpus_fingerprint")) for p in inputs.others]
        )
        masks = budget(
            model if model is not None else model_source,
            target_docs,
            retain_docs,
            inputs.target,
            inputs.others,
            retain_budget=retain_budget,
            seq_len=seq_len,
            batch_size=batch_size,
            max_tokens=budget_tokens,
            trace=trace,
        )
        params = {
            "retain_budget": retain_budget,
            "held_out_tokens": budget_tokens,
            "seq_len": seq_len,
            "max_fraction": MAX_FRACTION,
            "held_out": "profile split, held-out documents (never eval)",
            "target_docs": "toxic (label >= 0.5)" if toxic else "all",
            "trials": trace,
        }
    return Selection(masks, rule, params, inputs.sources, fp, name, trace)


def dry_run(model_source, inputs: Inputs, rule: str, **kwargs: Any) -> list[dict]:
    """How many experts each rule and parameter would mask: the skew and corr grids where the
    profiles allow them, then the chosen rule with the given parameters (budget runs its search)."""
    config = checkpoint.load_config(checkpoint.resolve(model_source))
    rows = []

    def add(name: str, param: str | None, value: Any, masks: dict) -> None:
        counts = masks_mod.counts(masks, config)
        rows.append(
            {
                "rule": name,
                "param": param,
                "value": value,
                "masked": sum(counts),
                "counts": counts,
                "fraction": fraction(masks, config),
            }
        )

    if inputs.others:
        for value in DRY_RUN_GRID["skew"][1]:
            add("skew", "ratio", value, skew(inputs.target, inputs.others, value))
    if inputs.target.labelled:
        for value in DRY_RUN_GRID["corr"][1]:
            add("corr", "threshold", value, corr(inputs.target, value))
    sel = apply_rule(model_source, inputs, rule, **kwargs)
    param = {"skew": "ratio", "corr": "threshold", "budget": "retain_budget"}[rule]
    add(f"{rule} (chosen)", param, sel.params[param], sel.masks)
    return rows
