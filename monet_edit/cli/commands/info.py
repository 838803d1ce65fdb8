"""`monet-edit info`: what a checkpoint is (architecture, groups, masks, sha256) and, with
--specialisation, how specialised its experts are on the embedded corpora."""

from __future__ import annotations

import typer

from ...infra.console import emit_json, err
from .. import options as opt

ORDER = 1


def info(
    model: str = opt.MODEL_ARGUMENT,
    specialisation: bool = typer.Option(False, "--specialisation", help="Also measure, per embedded corpus, "
                                        "the experts it uses 2x more than any other corpus (eval splits), and "
                                        "routing health (dead experts, distinct experts active per token)."),
    tokens: int = typer.Option(8192, "--tokens", min=1, help="--specialisation: eval tokens per corpus."),
    seq_len: int = typer.Option(None, "--seq-len", min=2, help="--specialisation: tokens per row "
                                "(default min(256, model positions))."),
    json_out: bool = opt.JSON_OUT,
) -> None:
    """Describe a checkpoint: decomposition, sizes, routing groups, masks, parameters, sha256."""
    from ...model import checkpoint
    from ...model.info import describe

    ckpt = checkpoint.of(model)
    data = describe(ckpt)
    if specialisation:
        from ...analysis import specialisation as spec
        from ...corpora import availability, list_corpora
        from ...model.loading import load_model

        names = [s.name for s in list_corpora() if s.kind != "general" and availability(s.name)[0]]
        length = seq_len or min(256, ckpt.config.max_position_embeddings)
        rows = spec.eval_rows(ckpt.tokenizer, names, tokens, length)
        data["specialisation"] = spec.measure(load_model(ckpt), rows)
    if json_out:
        emit_json(data)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in data.items():
        if key == "specialisation":
            continue
        if key == "parameters":
            value = f"{value:,}"
        table.add_row(key, "" if value is None else str(value))
    err.print(table)
    if specialisation:
        from rich.markdown import Markdown

        err.print(Markdown("\n".join(spec.lines(data["specialisation"]))))


def register(app: typer.Typer) -> None:
    app.command()(info)
