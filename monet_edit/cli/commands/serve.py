"""`monet-edit serve DIR`: vLLM's OpenAI-compatible server on a Monet checkpoint, edits applied."""

from __future__ import annotations

import typer

ORDER = 48


def serve(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Checkpoint directory, packaged model name (tiny) or Hub id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
) -> None:
    """Serve MODEL with vLLM (/v1/completions, /v1/chat/completions, ...); masks and scales apply.

    Any other flag goes to `vllm serve` unchanged, e.g. --tensor-parallel-size 4, --dtype bfloat16,
    --max-model-len 2048. The server runs until interrupted.
    """
    import os
    import sys

    from ...infra.console import err
    from ...model import checkpoint
    from ...serving import launch

    directory = checkpoint.resolve(model)
    edits = launch.check_checkpoint(directory, launch.tensor_parallel_size(list(ctx.args)))
    argv = launch.server_argv(launch.vllm_python(), directory, model, host, port, list(ctx.args))
    edited = (f"{edits['masked']} masked and {edits['scaled']} scaled experts"
              if any(edits.values()) else "no expert edits")
    named = "" if "--served-model-name" in " ".join(ctx.args) else f" as model {model!r}"
    err.print(f"serving {model} ({edited}) with vLLM on http://{host}:{port}/v1{named}")
    sys.stderr.flush()
    sys.stdout.flush()
    os.execv(argv[0], argv)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(serve)
