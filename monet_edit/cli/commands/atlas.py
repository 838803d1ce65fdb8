"""`monet-edit atlas build|serve`: every expert browsable and searchable, offline, in a browser."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from .. import options as opt

ORDER = 37

app = typer.Typer(name="atlas", no_args_is_help=True, add_completion=False,
                  help="An expert atlas: top occurrences, density and corpus usage of every expert, "
                       "served as a local web app.")


@app.command()
def build(
    ctx: typer.Context,
    model: str = typer.Argument("tiny", help="Checkpoint directory, packaged model name (tiny) or Hub id."),
    corpus: list[str] = typer.Option(None, "--corpus", "-c", help="Corpus to scan (a registered name or a "
                                     ".txt/.jsonl/.parquet path); repeatable. Default: every available "
                                     "embedded corpus but general."),
    tokens: int = typer.Option(20_000, "--tokens", min=2, max=2**31 - 1, help="Tokens scanned per corpus (at most)."),
    seq_len: int = typer.Option(128, "--seq-len", min=2, help="Tokens per row."),
    batch_size: int = opt.BATCH_SIZE,
    top: int = typer.Option(16, "--top", min=1, max=256, help="Occurrences kept per expert."),
    split: str = typer.Option("profile", "--split", help="Corpus split: train, profile or eval."),
    out: Path = typer.Option(None, "--out", "-o", help="Atlas directory to write (default ./atlas-MODEL)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing atlas directory."),
    shard_tokens: int = typer.Option(1 << 20, "--shard-tokens", min=1,
                                     help="Tokens per shard (the unit of --resume and of rank hand-out)."),
    device: str = opt.DEVICE,
    nproc: int = opt.NPROC,
    resume: bool = opt.RESUME,
    json_out: bool = opt.JSON_OUT,
) -> None:
    """Scan corpora once and write an atlas of every expert.

    Keeps each expert's top --top occurrences (with context and routing weight), its density and
    its usage per corpus. Resumable (--resume); data-parallel under torchrun (or --nproc N).
    """
    from ...analysis.atlas.build import build as build_atlas
    from ...corpora import SPLITS, open_corpus
    from ...errors import UsageError
    from ...infra import atomic, distributed
    from ...infra.console import emit_json, err
    from ...model import checkpoint, loading

    out = out or Path(f"atlas-{Path(str(model)).name}")

    def check() -> list[str]:
        if split not in SPLITS:
            raise UsageError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
        checkpoint.resolve(model)
        loading.parse_device(device)
        atomic.check_new_dir(out, force)
        if corpus:
            for name in corpus:
                open_corpus(name)
            return list(corpus)
        return _embedded()

    group = distributed.init(device, nproc)
    names = group.on_main(check)
    opt.maybe_launch(ctx, nproc)
    meta = build_atlas(model, names, out=out, tokens=tokens, seq_len=seq_len, batch_size=batch_size, top=top,
                       split=split, shard_tokens=shard_tokens, device=device, force=force, resume=resume,
                       command=shlex.join(["monet-edit", *(ctx.obj or {}).get("argv", sys.argv[1:])]))
    if meta is None:
        return
    from ...analysis.atlas.store import human

    size = sum(f["bytes"] for f in meta["files"].values())
    if json_out:
        emit_json({"out": str(out), "tokens": meta["tokens"], "corpora": [c["name"] for c in meta["corpora"]],
                   "bytes": size, "seconds": round(meta["seconds"], 3), "ranks": meta["ranks"]})
        return
    err.print(f"atlas: {meta['tokens']:,} tokens of {len(meta['corpora'])} corpora in {meta['seconds']:.1f} s "
              f"({meta['tokens'] / max(meta['seconds'], 1e-9):,.0f} tokens/s) -> {out} ({human(size)}); "
              f"browse it with `monet-edit atlas serve {out}`", soft_wrap=True)


def _embedded() -> list[str]:
    """Every embedded corpus whose source is installed, except the `general` mixture."""
    from ...corpora import registry
    from ...errors import UsageError
    from ...infra.console import err

    names, missing = [], []
    for spec in registry.list_corpora():
        if spec.kind == "general":
            continue
        (names if registry.availability(spec.name)[0] else missing).append(spec.name)
    if missing:
        err.print(f"atlas: skipping corpora whose sources are not installed: {', '.join(missing)}", soft_wrap=True)
    if not names:
        raise UsageError("no embedded corpus is available; install them (`make install`) or pass --corpus PATH")
    return names


@app.command()
def serve(
    directory: Path = typer.Argument(..., help="An atlas directory (from `monet-edit atlas build`)."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="Port (0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    model: str = typer.Option(None, "--model", help="The atlas's model, if it moved (default: as recorded)."),
    device: str = opt.DEVICE,
) -> None:
    """Serve an atlas as a local web app and JSON API (search, expert pages, masking panel)."""
    from ...analysis.atlas import server
    from ...infra.console import err

    app_, _ = server.open_app(directory, model=model, device=device, say=lambda line: err.print(line, soft_wrap=True))
    sock = server.bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"warning: listening on {host}: anyone who can reach this address can use the atlas and "
                  f"run the model", soft_wrap=True)
    err.print(f"serving {directory} at http://{shown}:{bound_port}/ (API: /api; Ctrl-C to stop)", soft_wrap=True)
    server.serve(app_, sock)
    err.print("stopped")


def register(root: typer.Typer) -> None:
    root.add_typer(app)
