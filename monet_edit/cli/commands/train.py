"""`monet-edit train RECIPE`."""

from __future__ import annotations

import typer

ORDER = 70


def train(
    recipe: str = typer.Argument(..., help="Training recipe (TOML with a [train] table), e.g. recipes/tiny.toml."),
    out: str = typer.Option(None, "--out", help="Output checkpoint directory (default: the recipe's)."),
    run_dir: str = typer.Option(None, "--run-dir", help="Where checkpoints for resume and the log go."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    steps: int = typer.Option(None, "--steps", min=1, help="Override the recipe's step count."),
    threads: int = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    json_out: bool = typer.Option(False, "--json", help="Print the final metrics as JSON on stdout."),
) -> None:
    """Train a Monet from scratch on the embedded corpora (how monet-tiny is made)."""
    from ...infra.console import emit_json
    from ...training.train import train as run

    result = run(recipe, out=out, run_dir=run_dir, resume=resume, force=force, steps=steps, threads=threads)
    if json_out:
        emit_json(result)


def register(app: typer.Typer) -> None:
    app.command()(train)
