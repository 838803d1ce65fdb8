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


def _oos_entry(spec, fingerprints=None, built=None) -> dict:
    """The row of an out-of-source set: its target, availability and cache state."""
    from ...corpora import oos_registry, oos_store

    ok, detail = oos_registry.availability(spec.name)
    if built is None:
        built = oos_store.cached(spec.name, fingerprints)
    kind = spec.corpus_spec()
    return {
        "name": spec.name,
        "target": spec.target,
        "kind": kind.kind,
        "family": kind.family,
        "source": spec.source,
        "description": spec.description,
        **_state(ok, detail, built),
        "chars": built.chars if built else None,
    }


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
        **_state(ok, detail, built),
    }


def _state(ok: bool, detail: str, built) -> dict:
    """Whether a corpus can be built here and what its cached build holds (None when not built)."""
    return {"available": ok, "detail": detail, "built": built is not None,
            "fingerprint": built.fingerprint if built else None, "counts": built.counts if built else None}


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
    from ...corpora import list_oos, oos_store

    entries = [_entry(s) for s in list_corpora() if kind is None or s.kind == kind]
    fingerprints = oos_store.embedded_fingerprints(build=False)
    oos = {s.target: _oos_entry(s, fingerprints) for s in list_oos()}
    for e in entries:  # each corpus names the set that evaluates it out of source
        o = oos.get(e["name"])
        e["oos"] = {k: o[k] for k in ("name", "available", "built")} if o else None
    oos_rows = [oos[e["name"]] for e in entries if oos.get(e["name"])]
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
    table = Table(title="out-of-source evaluation sets (eval only: never profiled, selected on or trained on)",
                  title_justify="left")
    for col in ("name", "target", "ok", "built"):
        table.add_column(col, no_wrap=True)
    table.add_column("source / install", overflow="fold")
    for o in oos_rows:
        avail = "[green]yes[/]" if o["available"] else "[red]no[/]"
        built = o["fingerprint"][:8] if o["built"] else "-"
        table.add_row(o["name"], o["target"], avail, built, o["source"] if o["available"] else o["detail"])
    con.print(table)
    con.print(f"{sum(o['available'] for o in oos_rows)}/{len(oos_rows)} available; "
              "`monet-edit corpora show NAME@oos` describes one")
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
    from ...corpora import (
        availability,
        build,
        is_oos,
        list_corpora,
        list_oos,
        oos_registry,
        oos_store,
        user_corpus,
    )

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
        if source == "local":  # the out-of-source sets have no hub source
            for oos in list_oos():
                ok, why = oos_registry.availability(oos.name)
                if ok:
                    targets.append(oos.name)
                else:
                    skipped.append({"name": oos.name, "reason": why})
                    if not as_json:
                        con.print(f"[yellow]skip[/] {oos.name}: {why}")
    else:
        targets = [name]
    for target in targets:
        t0 = time.perf_counter()
        if is_oos(target):
            if source != "local":
                raise UsageError(f"{target} is built from local sources only; drop --source {source}")
            built = oos_store.build(target, force=force)
        elif not all_ and _is_user_path(target):
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
            splits = ", ".join(f"{k} {v}" for k, v in c.items())
            con.print(
                f"[green]built[/] {built.spec.name}: {sum(c.values())} docs ({splits}), "
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
    from ...corpora import WEAK_LABELS, availability, build, cached, get_spec, is_oos, user_corpus

    if is_oos(name):
        _show_oos(name, build_, as_json)
        return
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


def _show_oos(name: str, build_: bool, as_json: bool) -> None:
    from rich.markup import escape

    from ...corpora import oos_registry, oos_store

    spec = oos_registry.get_oos(name)
    ok, _ = oos_registry.availability(spec.name)
    built = oos_store.cached(spec.name)
    if built is None and ok and build_:
        built = oos_store.build(spec.name)
    docs = built.load("eval") if built is not None else []
    info = _oos_entry(spec, built=built)
    info.update({"dir": str(built.dir) if built else None, "parts": built.meta["parts"] if built else None,
                 "dropped_overlap": built.meta["dropped_overlap"] if built else None,
                 "sample": docs[0] if docs else None})
    if as_json:
        emit_json(info)
        return
    con = err
    con.print(f"[bold]{spec.name}[/] (out-of-source eval set for {spec.target}; eval only)")
    con.print(f"  description: {escape(spec.description)}")
    con.print(f"  available:   {'yes' if ok else 'no'} ({escape(info['detail'])})")
    if built is None:
        con.print(f"  built:       no (run `monet-edit corpora build {spec.name}`)")
        return
    con.print(f"  fingerprint: {built.fingerprint}")
    con.print(f"  dir:         {built.dir}")
    con.print(f"  eval         {built.counts['eval']:6d} docs {built.chars['eval']:>11,} chars "
              f"({built.meta['dropped_overlap']} dropped: overlap with the embedded corpora)")
    for key, part in built.meta["parts"].items():
        con.print(f"    {key:12s} {part['chars']:>9,} chars  {escape(part['source'])}")
    if docs:
        text = docs[0]["text"]
        con.print(f"  sample ({escape(docs[0]['id'])}):")
        con.print(escape(text[:600] + (" ..." if len(text) > 600 else "")), markup=False, highlight=False)


ORDER = 10


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="corpora", help="List, build and inspect the embedded corpora.")
