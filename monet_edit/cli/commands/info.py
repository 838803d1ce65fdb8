"""`monet-edit info`: what a checkpoint is (architecture, groups, masks, sha256)."""

from __future__ import annotations

import typer

from ...infra.console import emit_json, err
from .. import options as opt

ORDER = 1


def info(
    model: str = opt.MODEL_ARGUMENT,
    json_out: bool = opt.JSON_OUT,
) -> None:
    """Describe a checkpoint: decomposition, sizes, routing groups, masks, parameters, sha256."""
    from ...model.info import describe

    data = describe(model)
    if json_out:
        emit_json(data)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in data.items():
        if key == "parameters":
            value = f"{value:,}"
        table.add_row(key, "" if value is None else str(value))
    err.print(table)


def register(app: typer.Typer) -> None:
    app.command()(info)
