"""`monet-edit resect`: write a new checkpoint with the selected experts masked."""

from __future__ import annotations

from pathlib import Path

import typer

from ...infra.console import emit_json, err
from .. import options as opt

ORDER = 40


@opt.with_params(opt.rule_params, into="rule_params")
def resect(
    domain: str = opt.DOMAIN,
    language: str = opt.LANGUAGE,
    toxicity: bool = opt.TOXICITY,
    corpus: str = opt.CORPUS,
    reference: list[str] = opt.REFERENCE,
    mask: str = typer.Option(None, "--mask", help="Use this mask file instead of profiling and selecting."),
    rule: str = opt.RULE,
    model: str = opt.MODEL,
    tokens: int = opt.TOKENS,
    seq_len: int = opt.SEQ_LEN,
    batch_size: int = opt.BATCH_SIZE,
    profiles_dir: str = opt.PROFILES_DIR,
    out: str = typer.Option(None, "--out", help="Output checkpoint directory (default ./resected-TARGET)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    json_out: bool = opt.JSON_OUT,
    rule_params: dict = None,
) -> None:
    """Profile and select if needed, then write a new checkpoint directory with the masks applied.

    The base checkpoint is never modified; the output is written atomically and holds config.json
    (with the edit record), model.safetensors (base tensors byte for byte plus masks), the
    tokenizer, a model card README.md and manifest.json (sha256 of everything).
    """
    from ...editing import resect as resect_mod
    from ...errors import UsageError
    from ...model import checkpoint
    from ...model import masks as masks_mod
    from ...selection import select as selection
    from ...selection import targets

    if mask and (domain or language or toxicity or corpus):
        raise UsageError(
            "give either --mask FILE or a target (--domain, --language, --toxicity, --corpus), not both"
        )
    base = checkpoint.of(model)
    config = base.config
    if mask:
        masks, meta = selection.load_mask(mask, config, base.fingerprint)
        label = str(meta.get("target") or Path(mask).stem)
    else:
        target = targets.resolve(domain, language, toxicity, corpus, reference)
        label, rule = target.label, target.check_rule(rule)
    path = Path(out or f"resected-{Path(label).stem}")
    resect_mod.check_output(path, base.dir, force)
    if not mask:
        sel = selection.select(base, target, rule, tokens=tokens, seq_len=seq_len, batch_size=batch_size,
                               profiles_dir=profiles_dir, **rule_params)
        masks, meta = sel.masks, sel.meta(config)
    counts = masks_mod.counts(masks, config)
    opt.warn_if_empty(sum(counts), meta.get("rule", "given mask"), meta.get("params", {}))
    written = resect_mod.resect(base, masks, path, force=force, command=opt.command_line(), mask_meta=meta)
    record = checkpoint.of(written).edit_record
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
