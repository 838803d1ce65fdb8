"""`monet-edit generate`: sample a continuation (KV cache, seeded)."""

from __future__ import annotations

import sys

import typer

from ...infra.console import emit_json
from .. import options as opt

ORDER = 2


def generate(
    model: str = opt.MODEL_ARGUMENT,
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1, help="Tokens to sample."),
    temperature: float = typer.Option(0.8, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass."),
    seed: int = typer.Option(0, "--seed"),
    mask: str = typer.Option(None, "--mask", help="Mask file to apply on top of the model's own."),
    json_out: bool = opt.JSON_OUT,
) -> None:
    """Sample a continuation of PROMPT (prompt and continuation on stdout)."""
    from ...model import generate as gen
    from ...model import loading

    net = loading.load_model(model, mask=mask)
    tok = loading.load_tokenizer(model)
    ids = tok.encode(prompt)
    rows = gen.sample(net, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, seed=seed, eos_id=tok.eos_id)
    text = tok.decode(rows[0])
    if json_out:
        emit_json({"prompt": prompt, "completion": text, "seed": seed, "temperature": temperature,
                   "top_p": top_p, "tokens": len(rows[0])})
    else:
        sys.stdout.write(prompt + text + "\n")


def register(app: typer.Typer) -> None:
    app.command()(generate)
