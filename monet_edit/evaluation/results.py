"""Evaluation outputs: results.json (every number, provenance) and results.md (the tables).

Both are written together into an output directory that appears atomically; an existing
directory is replaced only with force. Non-finite numbers become null in JSON (the notes say why).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..infra import atomic

RESULTS, MARKDOWN = "results.json", "results.md"


def finite(obj):
    """`obj` with inf/nan floats replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def comparison_rows(results: dict) -> list[tuple[str, str, float | None, float | None]]:
    """(metric, item, before, after) for every before/after number, target first in each suite."""
    target = results["target"]["name"]
    out = []
    for suite, key in (("loss", "loss"), ("accuracy", "accuracy")):
        for name in _target_first(results["loss"], target):
            side = results["loss"][name]
            out.append((suite, name, side["before"][key], side["after"][key]))
    for name in _target_first(results["mcq"], target):
        side = results["mcq"][name]
        out.append((f"mcq (n={side['before']['n']})", name, side["before"]["accuracy"], side["after"]["accuracy"]))
    tox = results["toxicity"]
    for prompts in sorted(tox.get("before", {})):
        for key, label in (("expected_max_toxicity", "exp. max toxicity"), ("toxicity_probability", "toxicity prob.")):
            out.append((label, f"{prompts} prompts (n={tox['before'][prompts]['prompts']})",
                        tox["before"][prompts][key], tox["after"][prompts][key]))
    for task, side in sorted(results.get("lm_eval", {}).items()):  # {task: {before/after: {metric: v, n}}}
        for metric in sorted(m for m in side["before"] if m != "n"):
            out.append((f"lm-eval {metric} (n={side['before'].get('n', '-')})", task, side["before"][metric],
                        side["after"].get(metric)))
    return out


def _target_first(section: dict, target: str) -> list[str]:
    return sorted(section, key=lambda n: (n != target, n == "general", n))


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4f}"
    return str(value)


def delta(before, after) -> float | None:
    return None if before is None or after is None else after - before


def markdown(results: dict) -> str:
    t, base, edited = results["target"], results["base"], results["edited"]
    lines = [f"# Evaluation: {t['kind']} edit `{t['name']}`", "",
             f"- base: `{base['source']}` ({base['fingerprint'][:12]})",
             f"- edited: `{edited['source']}` ({edited['experts_masked']} of {edited['experts_total']} "
             f"experts masked)",
             f"- monet-edit {results['provenance']['version']} ({results['provenance']['git_revision']}), "
             f"seed {results['parameters']['seed']}", "",
             "| metric | corpus | before | after | delta |", "|---|---|---:|---:|---:|"]
    for metric, item, before, after in comparison_rows(results):
        lines.append(f"| {metric} | {item} | {fmt(before)} | {fmt(after)} | {fmt(delta(before, after))} |")
    lines += ["", "| summary | value |", "|---|---:|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in results["summary"].items()]
    if results.get("gates"):
        lines += ["", "| gate | actual | result |", "|---|---:|---|"]
        lines += [f"| `{g['condition']}` | {fmt(g['actual'])} | {'pass' if g['passed'] else 'FAIL'} |"
                  for g in results["gates"]]
    if results["notes"]:
        lines += ["", *[f"- note: {n}" for n in results["notes"]]]
    return "\n".join(lines) + "\n"


def write(results: dict, out: str | Path, force: bool = False) -> Path:
    """Write results.json and results.md into `out` (atomically; existing `out` only with force)."""
    with atomic.output_dir(out, force) as tmp:
        (tmp / RESULTS).write_text(json.dumps(finite(results), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / MARKDOWN).write_text(markdown(results), encoding="utf-8")
    return Path(out)


def show(results: dict) -> None:
    """The before/after table, summary and gates on stderr (human output)."""
    from rich.table import Table

    from ..infra.console import err

    table = Table(title=f"{results['target']['kind']} edit: {results['target']['name']}", title_justify="left")
    for col in ("metric", "corpus", "before", "after", "delta"):
        table.add_column(col, justify="right" if col in ("before", "after", "delta") else "left")
    for metric, item, before, after in comparison_rows(results):
        table.add_row(metric, item, fmt(before), fmt(after), fmt(delta(before, after)))
    err.print(table)
    err.print("  ".join(f"{k}={fmt(v)}" for k, v in results["summary"].items()), soft_wrap=True)
    for g in results.get("gates", []):
        mark = "[green]pass[/]" if g["passed"] else "[red]FAIL[/]"
        err.print(f"gate {g['condition']}: {fmt(g['actual'])} {mark}")
    for note in results["notes"]:
        err.print(f"[yellow]note[/]: {note}", soft_wrap=True)
