"""Options and steps shared by `profile`, `mask` and `resect` (no command is registered here).

No torch at import time: library modules are imported inside the functions.
"""

from __future__ import annotations

import functools
import inspect
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import typer

from ..infra.console import err

MODEL_HELP = "Checkpoint directory, packaged model name (tiny) or Hugging Face Hub id."
MODEL = typer.Option("tiny", "--model", help=MODEL_HELP)
MODEL_ARGUMENT = typer.Argument("tiny", help=MODEL_HELP)
DOMAIN = typer.Option(None, "--domain", help="Target MMLU-Pro category (law, math, ...).")
LANGUAGE = typer.Option(
    None, "--language", help="Target language: python, c, go, rust, perl, javascript, en, de, fr, es, it, pt."
)
TOXICITY = typer.Option(False, "--toxicity", help="Target toxic text (weakly labelled fortunes).")
CORPUS = typer.Option(None, "--corpus", help="Target a user corpus (.txt/.jsonl/.parquet file or directory).")
REFERENCE = typer.Option(None, "--reference", help="A corpus to compare the target with (repeat the option; "
                         "default: every other corpus, the general mixture included).")
TOKENS = typer.Option(100_000, "--tokens", min=1, help="Tokens profiled per corpus (at most).")
SEQ_LEN = typer.Option(256, "--seq-len", min=2, help="Tokens per profiled row.")
BATCH_SIZE = typer.Option(8, "--batch-size", min=1, help="Rows per forward pass.")
PROFILES_DIR = typer.Option(
    None, "--profiles-dir", help="Where profiles are cached (default $MONET_EDIT_HOME/profiles)."
)


def _rule_help() -> str:
    from ..selection import rules

    defaults = ", ".join(f"{r.name} for {'/'.join(r.default_for)}" for r in rules.registry().values()
                         if r.default_for)
    return f"{' | '.join(rules.registry())} (default: {defaults})."


RULE = typer.Option(None, "--rule", help=_rule_help())


def rule_params() -> list:
    """Every selection rule's parameters (their CLI options)."""
    from ..selection import rules

    return list(rules.params().values())
JSON_OUT = typer.Option(False, "--json", help="Print JSON on stdout.")
DEVICE = typer.Option(None, "--device", help="cpu (default) or cuda (under torchrun: each rank's own GPU).")
NPROC = typer.Option(
    None, "--nproc", help="Run data-parallel on N local ranks (launches torchrun --standalone for you)."
)
RESUME = typer.Option(
    False, "--resume", help="Keep the shards an interrupted run completed (default: start over)."
)


def hidden_alias(flag: str, new: str):
    """An old flag name kept for one release: hidden from --help, same meaning as `new`."""
    return typer.Option(None, flag, hidden=True, help=f"Old name of {new}.")


def merge_alias(value, old_value, old: str, new: str):
    """The value of `new`, or of its hidden alias `old` (not both)."""
    from ..errors import UsageError

    if old_value is not None and value is not None:
        raise UsageError(f"{old} is the old name of {new}; give one of them")
    return value if value is not None else old_value


def maybe_launch(ctx: typer.Context, nproc: int | None) -> None:
    """With --nproc N > 1 outside torchrun, run this same command on N ranks and exit with their code."""
    from ..infra import distributed

    if distributed.should_launch(nproc):
        args = (ctx.obj or {}).get("argv", sys.argv[1:])
        raise typer.Exit(distributed.launch(nproc, args))


def command_line() -> str:
    """The command as the user typed it (recorded in edit records and model cards)."""
    return shlex.join(["monet-edit", *sys.argv[1:]])


def check_new_file(path: Path, force: bool) -> None:
    from ..errors import UsageError

    if path.is_dir():
        raise UsageError(f"{path}: is a directory (give a file path with --out)")
    if path.exists() and not force:
        raise UsageError(f"{path}: output file exists (use --force to replace it)")


def warn_if_empty(masked: int, rule: str, params: dict) -> None:
    if masked == 0:
        shown = ", ".join(f"{k}={v}" for k, v in params.items() if not isinstance(v, (list, dict)))
        err.print(
            f"[bold yellow]warning:[/] the selection is EMPTY: rule {rule} ({shown}) masks no expert; "
            "the output records 0 masked experts (a --gate on it fails with exit 3)"
        )


def print_counts(counts: list[int], per_group: int) -> None:
    from rich.table import Table

    table = Table(title="masked experts per routing group", title_justify="left")
    for col in ("group", "masked", "fraction"):
        table.add_column(col, justify="right")
    for g, c in enumerate(counts):
        table.add_row(str(g), f"{c:,}", f"{c / per_group:.2%}")
    total = sum(counts)
    table.add_row("all", f"{total:,}", f"{total / (per_group * len(counts)):.2%}")
    err.print(table)


def with_params(params: Callable[[], Iterable], into: str) -> Callable:
    """Add one CLI option per declared Param (monet_edit.infra.params) to a command, and hand
    their values to it as one dict argument `into` (so the flags come from the registries)."""

    def decorate(fn: Callable) -> Callable:
        declared = list(params())
        sig = inspect.signature(fn)
        extra = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY,
                                   default=typer.Option(p.default, p.flag, help=p.help),
                                   annotation=p.type if p.default is not None or not p.optional else p.type | None)
                 for p in declared]
        kept = [q for q in sig.parameters.values() if q.name != into]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            values = {p.name: kwargs.pop(p.name) for p in declared}
            return fn(*args, **{into: values}, **kwargs)

        command.__signature__ = sig.replace(parameters=[*kept, *extra])
        return command

    return decorate
