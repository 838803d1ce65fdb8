"""Before (base) vs after (edited) on held-out eval splits: the suites, run once per model."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .. import checkpoint, provenance
from ..errors import UsageError
from . import summary as summary_mod
from .plan import EvalParams, Target, loss_corpora

MAX_SEQ_LEN = 256


def load_data(target: Target, params: EvalParams, tokenizer, seq_len: int) -> dict:
    """Everything the suites read, prepared once for both models: loss rows, MCQ items, prompts."""
    from ..corpora import build, user_corpus
    from ..scoring import rows, token_stream

    data: dict = {"fingerprints": {}, "loss": {}, "mcq": {}, "prompts": None}
    if "loss" in params.suites:
        for name in loss_corpora(target):
            built = user_corpus(name) if target.kind == "corpus" and name == target.name else build(name)
            data["fingerprints"][name] = built.fingerprint
            stream = token_stream(tokenizer, built.load("eval"), params.tokens)
            data["loss"][name] = rows(stream, seq_len, f"{name} (eval split)")
    if "mcq" in params.suites:
        from ..corpora import names

        for name in names("domain"):
            built = build(name)
            data["fingerprints"][name] = built.fingerprint
            data["mcq"][name] = built.load("eval")[: params.mcq_items]
    if "toxicity" in params.suites:
        from . import toxicity

        built = build("toxicity")
        data["fingerprints"]["toxicity"] = built.fingerprint
        data["prompts"] = toxicity.select_prompts(built.load("eval"), params.prompts)
    return data


def run_suites(model, tokenizer, data: dict, params: EvalParams, log: Callable[[str], None]) -> dict:
    from ..scoring import loss_sums
    from . import mcq, toxicity

    out: dict = {}
    if data["loss"]:
        started = time.perf_counter()
        out["loss"] = {name: loss_sums(model, batch_rows, params.batch_size).to_dict()
                       for name, batch_rows in data["loss"].items()}
        tokens = sum(v["tokens"] for v in out["loss"].values())
        log(f"  loss: {len(data['loss'])} corpora, {tokens:,} tokens in {time.perf_counter() - started:.1f} s")
    if data["mcq"]:
        started = time.perf_counter()
        out["mcq"] = {name: mcq.score(model, tokenizer, docs) for name, docs in data["mcq"].items()}
        log(f"  mcq: {sum(len(d) for d in data['mcq'].values())} questions in {time.perf_counter() - started:.1f} s")
    if data["prompts"] is not None:
        started = time.perf_counter()
        out["toxicity"] = toxicity.score(model, tokenizer, data["prompts"], samples=params.samples,
                                         max_new_tokens=params.max_new_tokens, seed=params.seed)
        log(f"  toxicity: {sum(len(p) for p in data['prompts'].values())} prompts x {params.samples} samples "
            f"in {time.perf_counter() - started:.1f} s")
    return out


def _side_by_side(before: dict, after: dict) -> dict:
    return {name: {"before": before[name], "after": after[name]} for name in before}


def _masked(model) -> tuple[int, int]:
    cfg = model.config
    return sum(int(m.sum()) for m in model.masks().values()), cfg.num_groups * cfg.moe_experts ** 2


def _mask_record(mask) -> dict | None:
    """A mask file applied on top of the edited model: its path and sha256 (dict masks: None)."""
    if isinstance(mask, (str, Path)):
        return {"path": str(mask), "sha256": provenance.sha256_file(mask)}
    return None


def evaluate(base: str, edited: str, target: Target, params: EvalParams, *, edited_mask=None,
             device=None, log: Callable[[str], None] = lambda _: None) -> dict:
    """Results of comparing `edited` (with `edited_mask` applied on top, if given) to `base`."""
    import torch

    from ..loading import load_model, load_tokenizer

    base_dir, edited_dir = checkpoint.resolve(base), checkpoint.resolve(edited)
    tokenizer = load_tokenizer(edited_dir)
    if load_tokenizer(base_dir).vocab_size != tokenizer.vocab_size:
        raise UsageError(f"{edited}: tokenizer differs from the base model's ({base}); cannot compare")
    config = checkpoint.load_config(edited_dir)
    seq_len = params.seq_len or min(MAX_SEQ_LEN, config.max_position_embeddings)
    if seq_len > config.max_position_embeddings:
        raise UsageError(f"--seq-len {seq_len} exceeds the model's {config.max_position_embeddings} positions")
    if params.max_new_tokens >= config.max_position_embeddings:
        raise UsageError(f"--max-new-tokens {params.max_new_tokens} leaves no room for a prompt in the "
                         f"model's {config.max_position_embeddings} positions")
    data = load_data(target, params, tokenizer, seq_len)
    sides, masked = {}, (0, 0)
    for side, source, mask in (("before", base_dir, None), ("after", edited_dir, edited_mask)):
        log(f"{side}: {source}" + (" + selected mask" if mask is not None else ""))
        model = load_model(source, mask=mask, device=device)
        if side == "after":
            masked = _masked(model)
        torch.manual_seed(params.seed)
        sides[side] = run_suites(model, tokenizer, data, params, log)
        del model
    b, a = sides["before"], sides["after"]
    loss = _side_by_side(b["loss"], a["loss"]) if "loss" in b else {}
    mcq = _side_by_side(b["mcq"], a["mcq"]) if "mcq" in b else {}
    tox = {"before": b["toxicity"], "after": a["toxicity"]} if "toxicity" in b else {}
    summary, notes = summary_mod.summarise(target.name, loss, mcq, tox, *masked)
    if tox:
        from ..corpora.toxicity import WEAK_NOTE

        notes.append(f"toxicity scorer: {WEAK_NOTE}")
    if mcq:
        notes.append("multiple choice: summed answer log-likelihood, not length-normalised "
                     "(accuracy_norm: per character); chance is 0.25")
    return {
        "provenance": provenance.record(seed=params.seed),
        "base": {"source": str(base), "dir": str(base_dir), "fingerprint": checkpoint.model_fingerprint(base_dir)},
        "edited": {"source": str(edited), "dir": str(edited_dir),
                   "fingerprint": checkpoint.model_fingerprint(edited_dir),
                   "mask": _mask_record(edited_mask), "experts_masked": masked[0], "experts_total": masked[1]},
        "target": {"name": target.name, "kind": target.kind, "references": list(target.references)},
        "parameters": dict(params.to_dict(), seq_len=seq_len),
        "corpora": data["fingerprints"],
        "prompts": data["prompts"],
        "loss": loss,
        "mcq": mcq,
        "toxicity": tox,
        "summary": summary,
        "notes": notes,
    }
