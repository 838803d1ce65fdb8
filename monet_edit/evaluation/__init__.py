"""Evaluation of an edit: base vs edited model on held-out eval splits (README: Design notes).

`prepare` turns user input into a Plan and fails fast (UsageError) on anything wrong, before any
model runs; `execute` computes the suites, writes results.json + results.md, and checks gates
(GateFailed after the results are written). No torch at import time.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import GateFailed, UsageError
from ..infra import atomic
from ..model import checkpoint
from ..model.loading import parse_device
from . import gates
from .plan import (
    EvalParams,
    Target,
    check_params,
    parse_suites,
    record_base,
    record_target,
    target_from_name,
)

__all__ = ["EvalParams", "Plan", "Target", "execute", "prepare", "target_from_name"]


@dataclass
class Plan:
    model: checkpoint.Checkpoint
    base: checkpoint.Checkpoint
    target: Target
    params: EvalParams
    conditions: list[gates.Condition]
    out: Path
    force: bool = False
    device: str | None = None
    resume: bool = False


def default_model() -> str:
    """The current directory when it holds a checkpoint, else the packaged model."""
    return "." if Path("config.json").is_file() else "tiny"


def default_out(model_dir: Path, record: dict | None) -> Path:
    """<model>/eval for a writable resected checkpoint, else ./eval-<model name>."""
    if record is not None and os.access(model_dir, os.W_OK):
        return model_dir / "eval"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", model_dir.resolve().name).strip("-.") or "model"
    return Path(f"eval-{name}")


def prepare(model: str | None = None, base: str | None = None, target: str | None = None, *,
            references: list[str] | None = None, suites: str | None = None, gate: str | None = None, out: str | Path | None = None,
            force: bool = False, device: str | None = None, resume: bool = False, **params) -> Plan:
    """Validate everything an evaluation needs; raise UsageError naming the bad input.
    `references`: the corpora whose change counts as the others' (default: every other corpus)."""
    edited = checkpoint.of(model or default_model())
    record = edited.edit_record
    if base is None:
        if record is None:
            raise UsageError(f"{edited}: no edit record in config.json (not a resected checkpoint); "
                             f"give --base MODEL to compare against")
        base = record_base(record, edited.dir)
    base_ckpt = checkpoint.of(base)
    if target is not None:
        tgt = target_from_name(target, references)
    elif record is not None:
        tgt = record_target(record, edited.dir, references)
    else:
        raise UsageError(f"{edited}: no edit record names the target; give --target CORPUS")
    plan_params = EvalParams(suites=parse_suites(suites, tgt), **params)
    check_params(plan_params)
    parse_device(device)
    conditions = gates.parse(gate, plan_params.suites) if gate is not None else []
    if conditions and empty_selection(edited, base_ckpt):
        raise GateFailed(f"{edited}: empty selection, the edited model masks no experts and equals its base; "
                         f"gates cannot pass (nothing evaluated or written)")
    out_path = atomic.check_new_dir(out if out is not None else default_out(edited.dir, record), force)
    return Plan(edited, base_ckpt, tgt, plan_params, conditions, out_path, force, device=device, resume=resume)


def empty_selection(edited: checkpoint.Checkpoint, base: checkpoint.Checkpoint) -> bool:
    """True when the edited model can only differ from its base by masks and masks nothing."""
    return edited.fingerprint == base.fingerprint and edited.masked == 0


def execute(plan: Plan, log: Callable[[str], None] = lambda _: None,
            show: Callable[[dict], None] = lambda _: None) -> dict:
    """Run the plan, write results, show them, then enforce the gates (GateFailed, exit 3).

    Under torchrun every rank runs this and gets the same numbers; rank 0 alone writes, shows and
    fails on a gate (the other ranks end with 0, so torchrun never stops rank 0 while it writes)."""
    from ..infra import distributed, journal, locks
    from . import results as report
    from .compare import evaluate

    group = distributed.group()
    with contextlib.ExitStack() as held:  # one eval at a time writes (and journals) plan.out
        group.on_main(lambda: held.enter_context(locks.hold(Path(plan.out), "evaluating", say=log)), share=False)
        results = evaluate(plan.base, plan.model, plan.target, plan.params, device=plan.device, log=log,
                           journal_for=plan.out, resume=plan.resume)
        if results["edited"]["experts_masked"] == 0:
            results["notes"].append("the edited model masks no experts")
        results["gates"] = gates.check(plan.conditions, results["summary"])
        if not group.main:
            return results  # rank 0 writes, shows and enforces the gates (its exit code is the job's)
        report.write(results, plan.out, plan.force)
        journal.discard(plan.out)
    show(results)
    gates.enforce(results["gates"])
    return results
