"""Selecting experts for a target: profiles in, a Selection (masks + what made them) out.

The rules themselves live in selection/rules (one module each, registered there); this module
gathers their inputs (profiles computed or reused, or given as files), runs one rule or a dry-run
grid over all that apply, and writes or describes the resulting mask file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import profiling
from ..errors import UsageError
from ..infra import provenance
from ..model import checkpoint
from ..model import masks as masks_mod
from ..profiling import Profile
from . import rules
from .rules import Context, reference_max
from .rules.budget import MAX_FRACTION, budget, budget_score
from .rules.corr import corr
from .rules.skew import skew
from .targets import Target

__all__ = ["MAX_FRACTION", "Inputs", "Selection", "apply_rule", "budget", "budget_score", "corr", "dry_run",
           "files_inputs", "fraction", "load_mask", "reference_max", "select", "skew", "target_inputs",
           "write_mask"]


def fraction(masks: dict, config) -> float:
    return sum(masks_mod.counts(masks, config)) / (config.num_experts * config.num_groups)


@dataclass
class Selection:
    """A rule's result with everything its mask file records."""

    masks: dict
    rule: str
    params: dict[str, Any]
    sources: dict[str, Any]
    model_fingerprint: str
    target: str | None
    trace: list[dict] = field(default_factory=list)
    references: list[str] = field(default_factory=list)

    def counts(self, config) -> list[int]:
        return masks_mod.counts(self.masks, config)

    def meta(self, config) -> dict:
        """The metadata of this selection's mask file (also the edit record's source in resect)."""
        return {
            "rule": self.rule,
            "target": self.target,
            "params": self.params,
            "model_fingerprint": self.model_fingerprint,
            "sources": self.sources,
            "references": self.references,
            "reference_balance": f"means shrunk toward the pooled reference mean as if by {rules.PRIOR_TOKENS} tokens",
            "masked": sum(self.counts(config)),
            "fraction": fraction(self.masks, config),
            "counts": self.counts(config),
            "total_experts": config.num_experts * config.num_groups,
            "provenance": provenance.record(),
        }

    def write(self, path: str | Path, config) -> Path:
        return masks_mod.save(path, self.masks, config, self.meta(config))


def write_mask(path: str | Path, masks: dict, config, *, rule: str, params: dict, model_fingerprint: str,
               sources: dict, target: str | None = None) -> Path:
    """Write a mask file whose metadata records the rule, parameters, sources and provenance."""
    return Selection(masks, rule, params, sources, model_fingerprint, target).write(path, config)


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


# ---------------------------------------------------------------------------- inputs


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


def target_inputs(model_source, target: Target, *, references: bool, tokens: int, seq_len: int,
                  batch_size: int, profiles_dir: str | Path | None = None, device: Any = None,
                  quiet: bool = False) -> Inputs:
    """Profiles for a target (computed or reused): the target's and, with `references`, its references'."""
    ckpt = checkpoint.of(model_source)
    names = target.corpora if references else [target.name]
    paths = profiling.ensure_profiles(ckpt, names, tokens=tokens, seq_len=seq_len, batch_size=batch_size,
                                      out_dir=profiles_dir, device=device, quiet=quiet)
    return files_inputs(ckpt, list(paths.values()))


def files_inputs(model_source, files: list[str | Path]) -> Inputs:
    """Profiles from files (the first is the target), validated against the model."""
    ckpt = checkpoint.of(model_source)
    if not files:
        raise UsageError("give at least one --profile FILE (the target first, then its references)")
    profiles = [profiling.load(f, model_fingerprint=ckpt.fingerprint, config=ckpt.config) for f in files]
    paths = {str(f): Path(f) for f in files}
    return Inputs(profiles[0], profiles[1:], _sources(paths, profiles))


# ---------------------------------------------------------------------------- running rules


def apply_rule(model_source, inputs: Inputs, rule: str, *, seq_len: int = 256, batch_size: int = 8, model=None,
               **given: Any) -> Selection:
    """Run one rule on profiles with its parameters taken from `given` (others' are ignored;
    missing ones take the rule's defaults); `model` (already loaded) saves a reload."""
    chosen = rules.get(rule)
    if chosen.needs_labels and not inputs.target.labelled:
        raise UsageError(f"rule {rule} needs token labels and the profile of "
                         f"{inputs.target.meta.get('corpus', 'the target')} has none")
    values = rules.resolve_params(chosen, given)
    ctx = Context(inputs.target, inputs.others, checkpoint.of(model_source), seq_len, batch_size, model)
    if chosen.needs_references and not inputs.others:
        raise UsageError(f"rule {rule} needs reference profiles beside the target's")
    result = chosen.select(ctx, **values)
    target = str(inputs.target.meta.get("corpus_ref") or inputs.target.meta.get("corpus", "target"))
    references = [str(p.meta.get("corpus_ref") or p.meta.get("corpus")) for p in inputs.others]
    return Selection(result.masks, rule, result.params, inputs.sources,
                     inputs.target.meta.get("model_fingerprint", ""), target, result.trace, references)


def dry_run(model_source, inputs: Inputs, rule: str, *, seq_len: int = 256, batch_size: int = 8,
            **given: Any) -> list[dict]:
    """How many experts each rule and parameter would mask: every rule's grid where the profiles
    allow it, then the chosen rule with the given parameters (budget runs its search)."""
    ckpt = checkpoint.of(model_source)
    config = ckpt.config
    rows = []

    def add(name: str, param: str | None, value: Any, masks: dict) -> None:
        counts = masks_mod.counts(masks, config)
        rows.append({"rule": name, "param": param, "value": value, "masked": sum(counts), "counts": counts,
                     "fraction": fraction(masks, config)})

    ctx = Context(inputs.target, inputs.others, ckpt, seq_len, batch_size)
    for r in rules.registry().values():
        usable = ((inputs.target.labelled or not r.needs_labels) and (inputs.others or not r.needs_references)
                  and (not r.needs_model or r.name == rule))
        defaults = {q.name: q.default for q in r.params}
        for p in r.params if usable else ():
            for value in p.grid:
                add(r.name, p.name, value, r.select(ctx, **dict(defaults, **{p.name: value})).masks)
    chosen = rules.get(rule)
    result = chosen.select(ctx, **rules.resolve_params(chosen, given))
    param = chosen.params[0].name
    add(f"{rule} (chosen)", param, result.params[param], result.masks)
    return rows


def select(model_source, target: Target, rule: str | None, *, tokens: int, seq_len: int, batch_size: int,
           profiles_dir: str | Path | None = None, device: Any = None, quiet: bool = False,
           **given: Any) -> Selection:
    """Profile (or reuse profiles) and run the rule (the target's default when None) for a target."""
    rule = target.check_rule(rule)
    inputs = target_inputs(model_source, target, references=rules.get(rule).needs_references, tokens=tokens,
                           seq_len=seq_len, batch_size=batch_size, profiles_dir=profiles_dir, device=device,
                           quiet=quiet)
    return apply_rule(model_source, inputs, rule, seq_len=seq_len, batch_size=batch_size, **given)
