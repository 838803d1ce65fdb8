"""The `monet-edit` command line. Thin: parse, call the library, print.

torch is imported inside commands only, so `monet-edit --help` stays instant.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import MonetEditError
from ..infra.console import alert, emit_json, err

HELP = """Knowledge editing of Monet (Mixture of Monosemantic Experts) language models.

Every command runs offline on the embedded model [bold]tiny[/] unless given [bold]--model[/].

Examples:

  monet-edit info tiny                      # architecture, groups, masks, weights sha256

  monet-edit generate tiny --prompt "def "  # sample a continuation

  monet-edit profile --domain law           # which experts does law text use?

  monet-edit resect --language de           # mask German experts, write a new checkpoint

  monet-edit eval --model resected-de --gate "selectivity>=10"   # before vs after; exit 3 on failure

  monet-edit run law                        # profile -> mask -> resect -> eval -> gate from a recipe
"""

app = typer.Typer(name="monet-edit", help=HELP, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode="rich")

MODEL_HELP = "Checkpoint directory, packaged model name (tiny) or Hugging Face Hub id."


@app.command()
def info(
    model: str = typer.Argument("tiny", help=MODEL_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Describe a checkpoint: decomposition, sizes, routing groups, masks, parameters, sha256."""
    from ..model.info import describe

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


@app.command()
def generate(
    model: str = typer.Argument("tiny", help=MODEL_HELP),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1, help="Tokens to sample."),
    temperature: float = typer.Option(0.8, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass."),
    seed: int = typer.Option(0, "--seed"),
    mask: str = typer.Option(None, "--mask", help="Mask file to apply on top of the model's own."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Sample a continuation of PROMPT (prompt and continuation on stdout)."""
    from ..model import generate as gen
    from ..model import loading

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


def _register_subcommands() -> None:
    from .commands import register_all

    register_all(app)


_register_subcommands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: every expected failure becomes one line on stderr and an exit code."""
    from rich.markup import escape

    from ..infra.distributed import error_prefix

    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = command.main(args=args, prog_name="monet-edit", standalone_mode=False, obj={"argv": args})
        # typer returns (not raises) the code of a typer.Exit, and of Ctrl-C as 130, in this mode
        if code == 130:
            err.print("interrupted")
        return code if isinstance(code, int) else 0
    except MonetEditError as exc:
        if not getattr(exc, "echoed_by_rank0", False):
            alert.print(f"[red]error:[/] {error_prefix()}{escape(str(exc))}", markup=True, soft_wrap=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # parser errors: usage line + message, exit 2
        exc.show()
        return getattr(exc, "exit_code", 2)
    except typer.Abort:
        err.print("aborted")
        return 130
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except OSError as exc:
        from ..infra.atomic import STORAGE_ERRORS

        if exc.errno not in STORAGE_ERRORS or os.environ.get("MONET_EDIT_DEBUG"):
            return _internal(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        alert.print(f"[red]error:[/] {error_prefix()}{escape(where)}{escape(exc.strerror or str(exc))}",
                    markup=True, soft_wrap=True)
        return 1
    except Exception as exc:  # a bug, not bad input: still one line unless debugging
        return _internal(exc)


def _internal(exc: Exception) -> int:
    """A bug, not bad input: still one line unless MONET_EDIT_DEBUG is set."""
    from rich.markup import escape

    from ..infra.distributed import error_prefix

    if os.environ.get("MONET_EDIT_DEBUG"):
        raise exc
    alert.print(f"[red]internal error:[/] {error_prefix()}{type(exc).__name__}: {escape(str(exc))} "
                "(set MONET_EDIT_DEBUG=1 for the traceback)", markup=True, soft_wrap=True)
    return 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
