"""`monet-edit mask`: select the experts to mask (rules skew, corr, budget) into a mask file."""

from __future__ import annotations

from pathlib import Path

import typer

from ...infra.console import emit_json, err
from .. import options as opt

ORDER = 30


@opt.with_params(opt.rule_params, into="rule_params")
def mask(
    domain: str = opt.DOMAIN,
    language: str = opt.LANGUAGE,
    toxicity: bool = opt.TOXICITY,
    corpus: str = opt.CORPUS,
    reference: list[str] = opt.REFERENCE,
    profile: list[str] = typer.Option(
        None,
        "--profile",
        help="Profile file(s) instead of a target: the "
        "target's first, then its references (repeat the option).",
    ),
    rule: str = opt.RULE,
    model: str = opt.MODEL,
    tokens: int = opt.TOKENS,
    seq_len: int = opt.SEQ_LEN,
    batch_size: int = opt.BATCH_SIZE,
    profiles_dir: str = opt.PROFILES_DIR,
    out: str = typer.Option(
        None, "--out", help="Mask file to write (default ./mask-TARGET-RULE.safetensors)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print how many experts each rule and parameter would mask; write nothing."
    ),
    json_out: bool = opt.JSON_OUT,
    rule_params: dict = None,
) -> None:
    """Select experts with a rule and write a mask file (per-group counts and parameters inside).

    Profiles are computed (or reused) as `monet-edit profile` does. An empty selection is written
    with a loud warning and 0 masked experts recorded.
    """
    from ...errors import UsageError
    from ...model import checkpoint
    from ...selection import rules, targets
    from ...selection import select as selection

    if profile and (domain or language or toxicity or corpus):
        raise UsageError(
            "give either --profile FILE(s) or a target (--domain, --language, --toxicity, --corpus), not both"
        )
    ckpt = checkpoint.of(model)
    if profile:
        inputs = selection.files_inputs(ckpt, profile)
        label = str(inputs.target.meta.get("corpus", Path(profile[0]).stem))
        rule = rule or rules.default_for("toxicity" if inputs.target.labelled else "corpus")
    else:
        target = targets.resolve(domain, language, toxicity, corpus, reference)
        label, rule = target.label, target.check_rule(rule)
    rule = rules.get(rule).name
    path = Path(out or f"mask-{Path(label).stem}-{rule}.safetensors")
    if not dry_run:
        opt.check_new_file(path, force)
    if not profile:
        inputs = selection.target_inputs(  # a dry run tries every rule: references too
            ckpt,
            target,
            references=dry_run or rules.get(rule).needs_references,
            tokens=tokens,
            seq_len=seq_len,
            batch_size=batch_size,
            profiles_dir=profiles_dir,
        )
    params = dict(rule_params, seq_len=seq_len, batch_size=batch_size)
    config = ckpt.config
    if dry_run:
        rows = selection.dry_run(ckpt, inputs, rule, **params)
        if json_out:
            emit_json({"target": label, "dry_run": rows})
            return
        _print_grid(label, rows)
        return
    sel = selection.apply_rule(ckpt, inputs, rule, **params)
    counts = sel.counts(config)
    opt.warn_if_empty(sum(counts), rule, sel.params)
    sel.write(path, config)
    if json_out:
        emit_json(
            {
                "path": str(path),
                "target": label,
                "rule": rule,
                "params": sel.params,
                "counts": counts,
                "masked": sum(counts),
                "fraction": selection.fraction(sel.masks, config),
            }
        )
        return
    opt.print_counts(counts, config.num_experts)
    err.print(f"wrote {path} (rule {rule}, target {label})")


def _print_grid(label: str, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(
        title=f"dry run for {label}: experts each rule would mask (nothing written)", title_justify="left"
    )
    for col in ("rule", "parameter", "masked", "fraction", "per group"):
        table.add_column(col, justify="left" if col in ("rule", "parameter") else "right")
    for r in rows:
        table.add_row(
            r["rule"],
            f"{r['param']}={r['value']}",
            f"{r['masked']:,}",
            f"{r['fraction']:.2%}",
            " ".join(str(c) for c in r["counts"]),
        )
    err.print(table)


def register(app: typer.Typer) -> None:
    app.command()(mask)
