"""`monet-edit corpora list|build|show`: the corpus registry on the command line.

Human output goes to stderr (rich); `--json` output goes to stdout. Bad input raises UsageError,
which the main CLI turns into one line and exit code 2.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ...errors import UsageError
from ...infra.console import emit_json, err

app = typer.Typer(
    name="corpora",
    help="List, build and inspect the corpora (embedded offline sources, hub sources, user files).",
    no_args_is_help=True,
    add_completion=False,
)

SOURCES = ("local", "hub")


def _is_user_path(name: str) -> bool:
    from ...corpora import registry

    try:
        registry.get_spec(name)
        return False
    except UsageError:
        return Path(name).expanduser().exists()


def _entry(spec, ok: bool | None = None, detail: str = "", built=None) -> dict:
    """The registry row of a corpus (availability and cache looked up unless given)."""
    from ...corpora import availability, cached

    if ok is None:
        ok, detail = availability(spec.name)
        built = cached(spec.name)
    return {
        "name": spec.name,
        "kind": spec.kind,
        "family": spec.family,
        "source": spec.source,
        "description": spec.description,
        "available": ok,
        "detail": detail,
        "built": built is not None,
        "fingerprint": built.fingerprint if built else None,
        "counts": built.counts if built else None,
    }


@app.command("list")
def list_cmd(
    kind: str = typer.Option(
        None, "--kind", help="only corpora of this kind: domain, language, toxicity, general"
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output on stdout"),
) -> None:
    """Every registered corpus, whether its source is installed, and whether it is built."""
    from ...corpora import KINDS, list_corpora

    if kind is not None and kind not in KINDS:
        raise UsageError(f"unknown corpus kind {kind!r}; choose one of {', '.join(KINDS)}")
    entries = [_entry(s) for s in list_corpora() if kind is None or s.kind == kind]
    if as_json:
        emit_json(entries)
        return
    from rich.table import Table

    table = Table(title="corpora", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("ok", no_wrap=True)
    table.add_column("built", no_wrap=True)
    table.add_column("source / install", overflow="fold")
    for e in entries:
        kind_s = e["kind"] + (f"/{e['family']}" if e["family"] else "")
        avail = "[green]yes[/]" if e["available"] else "[red]no[/]"
        built = e["fingerprint"][:8] if e["built"] else "-"
        detail = e["source"] if e["available"] else e["detail"]
        table.add_row(e["name"], kind_s, avail, built, detail)
    con = err
    con.print(table)
    n_ok = sum(e["available"] for e in entries)
    con.print(f"{n_ok}/{len(entries)} available; cache: {_cache_dir()}")
    if any(e["kind"] == "toxicity" for e in entries):
        from ...corpora import WEAK_LABELS

        con.print(f"[yellow]note[/]: toxicity {WEAK_LABELS}")


def _cache_dir() -> Path:
    from ...corpora import cache_dir

    return cache_dir()


@app.command("build")
def build_cmd(
    name: str = typer.Argument(None, help="corpus name, or a .txt/.jsonl/.parquet file or directory"),
    all_: bool = typer.Option(False, "--all", help="build every available registered corpus"),
    source: str = typer.Option(
        "local", "--source", help="local (embedded, offline) or hub (Hugging Face, online)"
    ),
    force: bool = typer.Option(False, "--force", help="rebuild even when a valid cached build exists"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output on stdout"),
) -> None:
    """Build corpora into the cache (idempotent: a valid cached build is reused)."""
    from ...corpora import availability, build, list_corpora, user_corpus

    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if all_ and name:
        raise UsageError("give a corpus NAME or --all, not both")
    if not all_ and not name:
        raise UsageError("give a corpus NAME or --all")
    con = err
    results, skipped = [], []
    if all_:
        targets = []
        for spec in list_corpora():
            ok, why = availability(spec.name)
            if ok:
                targets.append(spec.name)
            else:
                skipped.append({"name": spec.name, "reason": why})
                if not as_json:
                    con.print(f"[yellow]skip[/] {spec.name}: {why}")
    else:
        targets = [name]
    for target in targets:
        t0 = time.perf_counter()
        if not all_ and _is_user_path(target):
            if source != "local":
                raise UsageError("--source hub applies to registered corpora, not to a file or directory")
            built = user_corpus(target)
        else:
            built = build(target, source=source, force=force)
        seconds = time.perf_counter() - t0
        d = built.to_dict()
        d["seconds"] = round(seconds, 3)
        results.append(d)
        if not as_json:
            c = built.counts
            con.print(
                f"[green]built[/] {built.spec.name}: {sum(c.values())} docs "
                f"(train {c['train']}, profile {c['profile']}, eval {c['eval']}), "
                f"{sum(built.chars.values()):,} chars, {built.fingerprint[:12]} in {seconds:.2f}s -> {built.dir}"
            )
    if as_json:
        emit_json({"built": results, "skipped": skipped} if all_ else results[0])


@app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="corpus name, or a .txt/.jsonl/.parquet file or directory"),
    build_: bool = typer.Option(True, "--build/--no-build", help="build the corpus if it is not cached"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output on stdout"),
) -> None:
    """A corpus's spec, availability, fingerprint, split counts and a sample document."""
    from ...corpora import WEAK_LABELS, availability, build, cached, get_spec, user_corpus

    if _is_user_path(name):
        built = user_corpus(name)
        spec = built.spec
        ok, detail = True, spec.source
    else:
        spec = get_spec(name)
        ok, detail = availability(spec.name)
        built = cached(spec.name)
        if built is None and ok and build_:
            built = build(spec.name)
    sample = None
    if built is not None:
        docs = built.load("train")
        if docs:
            sample = docs[0]
    info = _entry(spec, ok, detail, built)
    info.update({"dir": str(built.dir) if built else None, "chars": built.chars if built else None,
                 "sample": sample})
    if as_json:
        emit_json(info)
        return
    con = err
    from rich.markup import escape

    con.print(f"[bold]{spec.name}[/] ({spec.kind}{', ' + spec.family if spec.family else ''})")
    con.print(f"  description: {escape(spec.description)}")
    con.print(f"  source:      {escape(spec.source)}")
    con.print(f"  available:   {'yes' if ok else 'no'} ({escape(detail)})")
    if built is None:
        con.print("  built:       no (run `monet-edit corpora build " + spec.name + "`)")
        return
    c, ch = built.counts, built.chars
    con.print(f"  fingerprint: {built.fingerprint}")
    con.print(f"  dir:         {built.dir}")
    for split in ("train", "profile", "eval"):
        con.print(f"  {split:8s}     {c[split]:6d} docs {ch[split]:>11,} chars")
    if spec.kind == "toxicity":
        con.print(f"  [yellow]note[/]: {WEAK_LABELS}")
    if sample is not None:
        text = sample["text"]
        extra = f" label={sample['label']}" if "label" in sample else ""
        con.print(f"  sample ({escape(sample['id'])}{extra}):")
        con.print(escape(text[:600] + (" ..." if len(text) > 600 else "")), markup=False, highlight=False)


ORDER = 10


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="corpora", help="List, build and inspect the embedded corpora.")
