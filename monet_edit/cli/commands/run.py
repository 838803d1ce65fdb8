"""`monet-edit run RECIPE`: a whole edit (profile, select, resect, eval, gate) from a TOML recipe."""

from __future__ import annotations

import typer

ORDER = 60


def run_command(
    recipe: str = typer.Argument(..., help="Recipe file, or a packaged recipe: law, python, german, toxicity."),
    model: str = typer.Option(None, "--model", help="Base model (overrides the recipe's [model] source)."),
    out: str = typer.Option(None, "--out", help="Output checkpoint directory (overrides [resect] out)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    device: str = typer.Option(None, "--device", help="cpu (default) or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the results JSON on stdout."),
) -> None:
    """Run an edit recipe end to end: profile -> select -> resect -> eval -> gate.

    Writes the resected checkpoint (with its model card) and its evaluation in <out>/eval
    (results.json, results.md), prints the before/after table, and exits 3 when a gate fails.
    """
    import shlex
    import sys

    from ...editing import pipeline
    from ...evaluation import results as report
    from ...infra.console import emit_json, err

    def show(results: dict) -> None:
        report.show(results)
        err.print(f"wrote {results['edited']['source']} (evaluation in its eval/ directory)")
        if json_out:
            emit_json(report.finite(results))

    pipeline.run(recipe, model=model, out=out, force=force, device=device,
                 command=shlex.join(["monet-edit", *sys.argv[1:]]), log=err.print, show=show)


def register(app: typer.Typer) -> None:
    app.command(name="run")(run_command)
