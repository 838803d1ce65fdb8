"""`monet-edit report RUN`: a self-contained HTML page about a profile, mask, edit or eval run."""

from __future__ import annotations

import typer

ORDER = 55


def report(
    run: str = typer.Argument(..., help="A profile or mask file, a resected checkpoint directory (what `run "
                              "RECIPE` writes), or eval results (a directory with results.json)."),
    out: str = typer.Option(None, "--out", help="HTML file to write (default ./report-NAME.html)."),
    model: str = typer.Option(None, "--model", help="Model for the top-tokens table (default: the run's own)."),
    corpus: str = typer.Option(None, "--corpus", help="Corpus for the top-tokens table (default: the target)."),
    tokens: int = typer.Option(10_000, "--tokens", min=2, help="Tokens scanned for the top-tokens table."),
    top_experts: int = typer.Option(10, "--top-experts", min=0, help="Experts in the top-tokens table."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
) -> None:
    """Write one HTML page (plots embedded, no network) showing what a run did.

    Per routing group: a heatmap of each expert's specificity to the target (the selection rule's
    score) with the masked experts outlined, and the score's distribution with the threshold;
    before/after bars of every evaluated corpus; the top masked experts with the tokens and
    contexts that route to them most; the provenance of the page and its inputs.
    """
    from pathlib import Path

    from ...infra.console import err
    from ...reporting import check_out, default_out, write_report

    path = Path(out) if out else default_out(run)
    check_out(path, force)
    written = write_report(run, path, model=model, corpus=corpus, tokens=tokens, top_experts=top_experts,
                           force=force, log=err.print)
    err.print(f"wrote {written}")


def register(app: typer.Typer) -> None:
    app.command()(report)
