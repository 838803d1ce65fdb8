"""`monet-edit profile`: routing statistics of a target corpus and its reference corpora."""

from __future__ import annotations

import typer

from ...infra.console import emit_json, err
from .. import options as opt

ORDER = 20


def profile(
    ctx: typer.Context,
    domain: str = opt.DOMAIN,
    language: str = opt.LANGUAGE,
    toxicity: bool = opt.TOXICITY,
    corpus: str = opt.CORPUS,
    reference: list[str] = opt.REFERENCE,
    model: str = opt.MODEL,
    tokens: int = opt.TOKENS,
    seq_len: int = opt.SEQ_LEN,
    batch_size: int = opt.BATCH_SIZE,
    profiles_dir: str = opt.PROFILES_DIR,
    out: str = opt.hidden_alias("--out", "--profiles-dir"),
    device: str = opt.DEVICE,
    nproc: int = opt.NPROC,
    resume: bool = opt.RESUME,
    shard_tokens: int = typer.Option(
        1 << 20, "--shard-tokens", min=1, help="Tokens per shard (the unit of --resume and of rank hand-out)."
    ),
    json_out: bool = opt.JSON_OUT,
) -> None:
    """Profile the target's profile split and every reference corpus (default: all the others).

    Profiles already computed for the same model, corpus, --tokens and --seq-len are reused.
    Data-parallel under torchrun (or --nproc N); completed shards survive a crash (--resume).
    """
    from ... import profiling
    from ...corpora import open_corpus
    from ...infra import distributed
    from ...model import checkpoint, loading
    from ...selection import targets

    def check():
        """Bad input fails here, once: on rank 0 under torchrun, before --nproc launches ranks."""
        target = targets.resolve(domain, language, toxicity, corpus, reference)
        names = target.corpora
        checkpoint.resolve(model)
        loading.parse_device(device)
        for name in names:
            open_corpus(name)
        return target, names

    profiles_dir = opt.merge_alias(profiles_dir, out, "--out", "--profiles-dir")
    group = distributed.init(device, nproc)  # joins the job under torchrun; nothing otherwise
    target, names = group.on_main(check)
    opt.maybe_launch(ctx, nproc)
    paths = profiling.ensure_profiles(
        model, names, tokens=tokens, seq_len=seq_len, batch_size=batch_size, out_dir=profiles_dir, device=device,
        resume=resume, shard_tokens=shard_tokens,
    )
    if not group.main:
        return
    loaded = {name: profiling.load(path) for name, path in paths.items()}
    main = loaded[target.name]
    groups = profiling.summary(main)
    if json_out:
        emit_json(
            {
                "target": target.name,
                "kind": target.kind,
                "profiles": {
                    n: {"path": str(paths[n]), "tokens": p.n, "labelled": p.labelled}
                    for n, p in loaded.items()
                },
                "groups": groups,
            }
        )
        return
    from rich.table import Table

    E = main.experts
    table = Table(
        title=f"{target.name}: {main.n:,} tokens, {len(loaded) - 1} reference profile(s)",
        title_justify="left",
    )
    table.add_column("group", justify="right")
    table.add_column("active experts", justify="right")
    table.add_column("top experts (i,j): mean routing weight per token")
    for row in groups:
        top = "  ".join(f"({t['expert'] // E},{t['expert'] % E}): {t['mean']:.4f}" for t in row["top"])
        table.add_row(str(row["group"]), f"{row['active']:,} / {E * E:,}", top)
    err.print(table)


def register(app: typer.Typer) -> None:
    app.command()(profile)
