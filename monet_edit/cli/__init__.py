"""The `monet-edit` command line. Thin: parse, call the library, print.

torch is imported inside commands only, so `monet-edit --help` stays instant.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import MonetEditError
from ..infra.console import alert, err

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

def _bare_flags() -> None:
    """typer 0.29 prints `<bool>` after every flag (--force <bool>), as if it took a value: show
    flags bare, as click and argparse do."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display


_bare_flags()

app = typer.Typer(name="monet-edit", help=HELP, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode="rich")

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
