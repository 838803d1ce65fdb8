"""`monet-edit verify DIR`: is a checkpoint intact and consistent?"""

from __future__ import annotations

import typer

ORDER = 45


def verify(
    directory: str = typer.Argument(..., help="Checkpoint directory (resected or any Monet checkpoint)."),
    json_out: bool = typer.Option(False, "--json", help="Print the findings as JSON on stdout."),
) -> None:
    """Check config, tensor names and shapes, masks, the edit record and the manifest's sha256."""
    from ...editing.verify import check
    from ...errors import MonetEditError
    from ...infra.console import emit_json, err

    report = check(directory)
    if json_out:
        emit_json(report)
    for line in report["checked"]:
        err.print(f"[green]ok[/]  {line}")
    for line in report["problems"]:
        err.print(f"[red]bad[/] {line}")
    if report["problems"]:
        raise MonetEditError(f"{directory}: {len(report['problems'])} problem(s) found")


def register(app: typer.Typer) -> None:
    app.command()(verify)
