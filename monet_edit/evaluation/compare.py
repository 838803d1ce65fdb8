"""Before (base) vs after (edited) on held-out eval splits: the suites, run once per model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from ..infra import provenance
from ..infra.distributed import Group
from ..infra.journal import Journal
from ..model import checkpoint
from . import suites
from . import summary as summary_mod
from .plan import EvalParams, Target

MAX_SEQ_LEN = 256


def load_data(target: Target, params: EvalParams, tokenizer, seq_len: int) -> dict:
    """Every suite's data, prepared once for both models: {"suites": {name: data}, "fingerprints"}."""
    data: dict = {"suites": {}, "fingerprints": {}}
    for name in params.suites:
        data["suites"][name], fingerprints = suites.get(name).load(target, params, tokenizer, seq_len)
        data["fingerprints"].update(fingerprints)
    return data


def run_suites(model, tokenizer, data: dict, params: EvalParams, log: Callable[[str], None], *,
               side: str = "model", group: Group | None = None, journal: Journal | None = None) -> dict:
    """Every suite on one model, data-parallel over `group`; one already in `journal` is read, not rerun."""
    group = group or Group()
    out: dict = {}
    for name, suite_data in data["suites"].items():
        suite = suites.get(name)
        part = f"{side}-{name}.json"
        if journal is not None and journal.has(part):
            out[name] = group.on_main(lambda part=part: json.loads(journal.path(part).read_text("utf-8")))
            log(f"  {name}: kept from the interrupted run")
            continue
        started = time.perf_counter()
        out[name] = suite.run(model, tokenizer, suite_data, params, group)
        if journal is not None:
            journal.write(part, json.dumps(out[name], sort_keys=True).encode("utf-8"))
        log(f"  {name}: {suite.describe(suite_data, params)} in {time.perf_counter() - started:.1f} s")
    if params.lm_eval:  # whole on rank 0, shared with the others: lm-eval returns results on LOCAL_RANK 0 only
        from . import harness

        started = time.perf_counter()
        out["lm_eval"] = group.on_main(lambda: harness.run_tasks(
            model, tokenizer, params.lm_eval, include=params.lm_eval_include, limit=params.lm_eval_limit,
            batch_size=params.batch_size, seed=params.seed))
        log(f"  lm-eval: {','.join(params.lm_eval)} in {time.perf_counter() - started:.1f} s")
    return out


def _side_by_side(before: dict, after: dict) -> dict:
    return {name: {"before": before[name], "after": after[name]} for name in before}


def _masked(model) -> tuple[int, int]:
    cfg = model.config
    return sum(int(m.sum()) for m in model.masks().values()), cfg.num_groups * cfg.moe_experts ** 2


def _stored_masks_sha(ckpt: checkpoint.Checkpoint) -> str:
    """sha256 of the masks a checkpoint carries (its fingerprint leaves them out on purpose)."""
    import hashlib

    digest = hashlib.sha256()
    for group, mask in sorted(ckpt.stored_masks.items()):
        digest.update(str(group).encode("utf-8") + mask.numpy().tobytes())
    return digest.hexdigest()


def _mask_record(mask) -> dict | None:
    """A mask file applied on top of the edited model: its path and sha256 (dict masks: None)."""
    if isinstance(mask, (str, Path)):
        return {"path": str(mask), "sha256": provenance.sha256_file(mask)}
    return None


def evaluate(base, edited, target: Target, params: EvalParams, *, edited_mask=None,
             device=None, log: Callable[[str], None] = lambda _: None, journal_for: Path | None = None,
             resume: bool = False) -> dict:
    """Results of comparing `edited` (with `edited_mask` applied on top, if given) to `base`.

    Data-parallel over the torchrun ranks, if any (every rank returns the same numbers). With
    `journal_for` (the results directory), each finished suite is journalled beside it and
    `resume` reuses those of an interrupted run with the same models, data and parameters."""
    import torch

    from ..infra import distributed
    from ..model.loading import load_model

    group = distributed.group()
    device = distributed.rank_device(device, group)

    base, edited = checkpoint.of(base), checkpoint.of(edited)
    tokenizer = edited.tokenizer
    if base.tokenizer.vocab_size != tokenizer.vocab_size:
        raise UsageError(f"{edited}: tokenizer differs from the base model's ({base}); cannot compare")
    config = edited.config
    seq_len = params.seq_len or min(MAX_SEQ_LEN, config.max_position_embeddings)
    if seq_len > config.max_position_embeddings:
        raise UsageError(f"--seq-len {seq_len} exceeds the model's {config.max_position_embeddings} positions")
    if params.max_new_tokens >= config.max_position_embeddings:
        raise UsageError(f"--max-new-tokens {params.max_new_tokens} leaves no room for a prompt in the "
                         f"model's {config.max_position_embeddings} positions")
    data = group.first(lambda: load_data(target, params, tokenizer, seq_len))  # rank 0 fills the corpus cache
    base_fp, edited_fp = base.fingerprint, edited.fingerprint
    journal = None
    if journal_for is not None:
        job = {"base": base_fp, "edited": edited_fp, "edited_masks": _stored_masks_sha(edited),
               "mask": _mask_record(edited_mask), "target": target.name, "corpora": data["fingerprints"],
               "parameters": dict(params.to_dict(), seq_len=seq_len)}
        journal = Journal(Path(journal_for), job, group, resume=resume)
        if journal.note:
            log(journal.note)
    if group.world > 1:
        log(f"data-parallel on {group.world} ranks ({group.backend})")
    sides, masked = {}, (0, 0)
    for side, source, mask in (("before", base, None), ("after", edited, edited_mask)):
        log(f"{side}: {source.dir}" + (" + selected mask" if mask is not None else ""))
        model = load_model(source, mask=mask, device=device)
        if side == "after":
            masked = _masked(model)
        torch.manual_seed(params.seed)
        sides[side] = run_suites(model, tokenizer, data, params, log, side=side, group=group, journal=journal)
        del model
    b, a = sides["before"], sides["after"]
    entries = {name: suites.get(name).combine(b[name], a[name]) for name in params.suites}
    summary, notes = summary_mod.summarise(target.name, entries, *masked)
    if "lm_eval" in b:
        notes.append(f"lm-eval: zero-shot unless a task sets num_fewshot, {params.lm_eval_limit or 'all'} "
                     "documents per task at most; no standard errors")
    return {
        "provenance": provenance.record(seed=params.seed),
        "ranks": group.world,
        "base": {"source": str(base), "dir": str(base.dir), "fingerprint": base_fp},
        "edited": {"source": str(edited), "dir": str(edited.dir), "fingerprint": edited_fp,
                   "mask": _mask_record(edited_mask), "experts_masked": masked[0], "experts_total": masked[1]},
        "target": {"name": target.name, "kind": target.kind, "references": list(target.references)},
        "parameters": dict(params.to_dict(), seq_len=seq_len),
        "corpora": data["fingerprints"],
        "prompts": data["suites"].get("toxicity"),  # the sampled prompts, for reproduction
        **{name: entries.get(name, {}) for name in suites.registry()},
        "lm_eval": _side_by_side(b["lm_eval"], a["lm_eval"]) if "lm_eval" in b else {},
        "summary": summary,
        "notes": notes,
    }
