"""`monet-edit resect`: write a new checkpoint with the selected experts masked."""

from __future__ import annotations

from pathlib import Path

import typer

from ...infra.console import emit_json, err
from .. import options as opt

ORDER = 40


def resect(
    domain: str = opt.DOMAIN,
    language: str = opt.LANGUAGE,
    toxicity: bool = opt.TOXICITY,
    corpus: str = opt.CORPUS,
    mask: str = typer.Option(None, "--mask", help="Use this mask file instead of profiling and selecting."),
    rule: str = opt.RULE,
    ratio: float = opt.RATIO,
    threshold: float = opt.THRESHOLD,
    retain_budget: float = opt.RETAIN_BUDGET,
    model: str = opt.MODEL,
    tokens: int = opt.TOKENS,
    seq_len: int = opt.SEQ_LEN,
    batch_size: int = opt.BATCH_SIZE,
    profiles_dir: str = opt.PROFILES_DIR,
    out: str = typer.Option(None, "--out", help="Output checkpoint directory (default ./resected-TARGET)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    json_out: bool = opt.JSON_OUT,
) -> None:
    """Profile and select if needed, then write a new checkpoint directory with the masks applied.

    The base checkpoint is never modified; the output is written atomically and holds config.json
    (with the edit record), model.safetensors (base tensors byte for byte plus masks), the
    tokenizer, a model card README.md and manifest.json (sha256 of everything).
    """
    from ...editing import resect as resect_mod
    from ...errors import UsageError
    from ...infra.provenance import RECORD_KEY
    from ...model import checkpoint
    from ...model import masks as masks_mod
    from ...selection import select as selection
    from ...selection import targets

    if mask and (domain or language or toxicity or corpus):
        raise UsageError(
            "give either --mask FILE or a target (--domain, --language, --toxicity, --corpus), not both"
        )
    base = checkpoint.resolve(model)
    config = checkpoint.load_config(base)
    if mask:
        masks, meta = selection.load_mask(mask, config, checkpoint.model_fingerprint(base))
        label = str(meta.get("target") or Path(mask).stem)
    else:
        target = targets.resolve(domain, language, toxicity, corpus)
        label, rule = target.label, targets.check_rule(target, rule)
    path = Path(out or f"resected-{Path(label).stem}")
    resect_mod.check_output(path, base, force)
    if not mask:
        sel = opt.select(
            model,
            target,
            rule,
            ratio=ratio,
            threshold=threshold,
            retain_budget=retain_budget,
            tokens=tokens,
            seq_len=seq_len,
            batch_size=batch_size,
            profiles_dir=profiles_dir,
        )
        masks, meta = sel.masks, sel.meta(config)
    counts = masks_mod.counts(masks, config)
    opt.warn_if_empty(sum(counts), meta.get("rule", "given mask"), meta.get("params", {}))
    written = resect_mod.resect(model, masks, path, force=force, command=opt.command_line(), mask_meta=meta)
    record = checkpoint.load_config(written).extra[RECORD_KEY]
    if json_out:
        emit_json(
            {
                "out": str(written),
                "target": label,
                "rule": record["rule"],
                "counts": record["counts"],
                "masked": record["masked"],
                "fraction": record["fraction"],
                "fingerprint": record["base"]["fingerprint"],
            }
        )
        return
    opt.print_counts(record["counts"], config.num_experts)
    err.print(
        f"wrote {written} ({record['masked']:,} experts masked, {record['fraction']:.2%}; "
        f"load it with monet_edit.load_model)"
    )


def register(app: typer.Typer) -> None:
    app.command()(resect)
