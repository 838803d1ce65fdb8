"""`monet-edit experts MODEL --group G --expert I,J`: the tokens an expert is routed most."""

from __future__ import annotations

import typer

ORDER = 35


def experts(
    model: str = typer.Argument("tiny", help="Checkpoint directory, packaged model name (tiny) or Hub id."),
    group: int = typer.Option(..., "--group", "-g", help="Routing group (0 .. groups-1)."),
    expert: list[str] = typer.Option(..., "--expert", "-e", help="Expert I,J (g1 side, g2 side); repeatable."),
    corpus: str = typer.Option("general", "--corpus", help="Corpus to scan: a registered name or a "
                               ".txt/.jsonl/.parquet file or directory."),
    split: str = typer.Option("profile", "--split", help="Corpus split: train, profile or eval."),
    tokens: int = typer.Option(20_000, "--tokens", min=2, help="Tokens scanned (at most)."),
    seq_len: int = typer.Option(None, "--seq-len", min=2, help="Tokens per row (default min(128, model positions))."),
    top: int = typer.Option(10, "--top", min=1, help="Occurrences shown per expert."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Rows per forward pass."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Show the tokens (with short contexts) that route most to expert (I,J) of group G.

    The weight of expert (i, j) on a token is G_ij = sum_h g1[h,i] g2[h,j]; the model runs over up
    to --tokens tokens of the corpus split and the --top occurrences with the largest weight are
    listed, weight descending.
    """
    from ...analysis import experts as experts_mod
    from ...corpora import SPLITS
    from ...errors import UsageError
    from ...infra.console import emit_json, err
    from ...model import checkpoint, loading

    if split not in SPLITS:
        raise UsageError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    ckpt = checkpoint.of(model)
    config = ckpt.config
    seq_len = seq_len or min(128, config.max_position_embeddings)
    if seq_len > config.max_position_embeddings:
        raise UsageError(f"--seq-len {seq_len} exceeds the model's {config.max_position_embeddings} positions")
    wanted = [(group, *experts_mod.parse_expert(e, config.moe_experts)) for e in expert]
    experts_mod.check_experts(config, wanted)
    net, tok = loading.load_model(ckpt), ckpt.tokenizer
    rows, fingerprint = experts_mod.corpus_rows(tok, corpus, tokens=tokens, seq_len=seq_len, split=split)
    found = experts_mod.top_tokens(net, tok, rows, wanted, top=top,
                                   batch_size=batch_size)
    if json_out:
        emit_json({"model": model, "fingerprint": ckpt.fingerprint, "corpus": corpus,
                   "corpus_fingerprint": fingerprint, "split": split, "seq_len": seq_len, "experts": [f.to_dict() for f in found]})
        return
    from rich.table import Table
    from rich.text import Text

    E = config.moe_experts
    for f in found:
        table = Table(title=f"expert ({f.i},{f.j}) of group {f.group} (id {f.i * E + f.j}): top tokens on "
                      f"{corpus} ({split}, {f.scanned:,} tokens)", title_justify="left")
        for col in ("#", "weight", "token", "context"):
            table.add_column(col, justify="right" if col in ("#", "weight") else "left")
        for rank, hit in enumerate(f.hits, 1):
            context = Text(experts_mod.visible(hit.left))
            context.append(experts_mod.visible(hit.token), style="bold reverse")
            context.append(experts_mod.visible(hit.right))
            table.add_row(str(rank), f"{hit.weight:.4f}", Text(repr(hit.token)), context)
        if not f.hits:
            table.add_row("-", "-", "-", "no token of this corpus routes to this expert")
        err.print(table)


def register(app: typer.Typer) -> None:
    app.command()(experts)
