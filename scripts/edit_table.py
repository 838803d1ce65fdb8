"""Every selection rule on every headline target of a model, in-source and out-of-source, with intervals.

    .venv/bin/python scripts/edit_table.py [--model tiny] [--out runs/edit-table.jsonl] [--row TARGET:RULE[:PARAM=VALUE]]...

Each row selects with one rule (its default parameters unless the grid below says otherwise), then
evaluates base vs edited exactly as `monet-edit eval` does (same suites, seeds and intervals). One
JSON line per row is appended to --out as soon as it is measured (an interrupted run keeps its
rows and skips them when run again); the Markdown table for the README is printed at the end.
--row (repeatable) measures and prints only the grid rows it names: `python:skew:ratio=1.5`, `law:oracle`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from monet_edit.evaluation.compare import evaluate
from monet_edit.evaluation.plan import EvalParams
from monet_edit.model import checkpoint
from monet_edit.selection import select as selection
from monet_edit.selection import targets

# (target option, target name, rule, parameters): each rule at its default parameters, and the skew
# rule also at a lower ratio (the broad references make ratio 2 strict); most telling rows first, the
# oracle bound last
GRID = [
    ("language", "de", "skew", {"ratio": 2.0}), ("language", "de", "skew", {"ratio": 1.5}),
    ("language", "de", "budget", {}),
    ("language", "python", "skew", {"ratio": 2.0}), ("language", "python", "skew", {"ratio": 1.0}),
    ("domain", "law", "skew", {"ratio": 2.0}), ("domain", "law", "skew", {"ratio": 1.0}),
    ("toxicity", "toxicity", "corr", {"threshold": 0.1}),
    *[(kind, name, "contrastive", {}) for kind, name in
      (("language", "de"), ("language", "python"), ("domain", "law"), ("toxicity", "toxicity"))],
    ("language", "python", "budget", {}), ("domain", "law", "budget", {}),
    # tiny v2: skew between its two ratios for python and law
    ("language", "python", "skew", {"ratio": 1.5}), ("domain", "law", "skew", {"ratio": 1.5}),
    # the bound: a diagnostic that looks at the out-of-source sets the rows above never see
    *[(kind, name, "oracle", {}) for kind, name in
      (("domain", "law"), ("toxicity", "toxicity"), ("language", "python"), ("language", "de"))],
    # slowest last (gradients over every reference's profile tokens)
    *[(kind, name, "attribution", {}) for kind, name in (("language", "de"), ("language", "python"), ("domain", "law"))],
    # toxicity under the rules that do not need its labels (corr is the only one that needs them)
    *[("toxicity", "toxicity", rule, params) for rule, params in
      (("skew", {"ratio": 2.0}), ("budget", {}), ("attribution", {}))],
]
PROFILE = {"tokens": 50_000, "seq_len": 128, "batch_size": 8}
EVAL = {"tokens": 5_000, "seq_len": 128, "batch_size": 8, "seed": 0}
TOXICITY = {"prompts": 50, "samples": 5, "max_new_tokens": 20}
COLUMNS = ("target_loss_rel", "selectivity", "oos_target_loss_rel", "oos_selectivity", "general_loss_rel",
           "emt_rel")


def key(row: tuple) -> str:
    kind, name, rule, params = row
    return json.dumps([name, rule, params], sort_keys=True)


def measure(model: str, row: tuple) -> dict:
    kind, name, rule, params = row
    target = targets.resolve(**{kind: True if kind == "toxicity" else name})
    base = checkpoint.of(model)
    sel = selection.select(base, target, rule, **PROFILE, **params)
    suites = ("loss", "toxicity") if kind == "toxicity" else ("loss",)
    extra = TOXICITY if kind == "toxicity" else {}
    results = evaluate(base, base, target, EvalParams(suites=suites, **EVAL, **extra), edited_mask=sel.masks)
    total = base.config.num_experts * base.config.num_groups
    return {"key": key(row), "target": name, "rule": rule, "params": params, "masked": sum(sel.counts(base.config)),
            "fraction": sum(sel.counts(base.config)) / total, "summary": results["summary"],
            "chosen": {k: v for k, v in sel.params.items() if k in ("candidate", "ratio", "max_masked", "threshold")}}


def matches(row: tuple, spec: str) -> bool:
    """Whether a grid row is the one `TARGET:RULE[:PARAM=VALUE]` names (unnamed parameters match any)."""
    name, rule, *params = spec.split(":")
    wanted = dict(p.split("=", 1) for p in params if "=" in p)
    return (row[1], row[2]) == (name, rule) and all(same(row[3].get(k), v) for k, v in wanted.items())


def same(value: object, text: str) -> bool:
    try:
        return value == float(text)
    except ValueError:
        return str(value) == text


def cell(summary: dict, name: str, percent: bool) -> str:
    value = summary.get(name)
    if value is None:
        return "-"
    lo, hi = summary.get(f"{name}_lo"), summary.get(f"{name}_hi")
    fmt = (lambda v: f"{100 * v:+.2f}%") if percent else (lambda v: f"{v:.1f}")
    return fmt(value) + (f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else "")


def table(rows: list[dict]) -> str:
    head = ["target", "rule", "experts (share)", "target loss", "selectivity", "OOS target loss", "OOS selectivity",
            "general loss", "EMT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r["summary"]
        params = ", ".join(f"{k} {v:g}" for k, v in r["params"].items())
        lines.append("| " + " | ".join([
            r["target"], f"{r['rule']}{f' ({params})' if params else ''}", f"{r['masked']:,} ({100 * r['fraction']:.2f}%)",
            cell(s, "target_loss_rel", True), cell(s, "selectivity", False), cell(s, "oos_target_loss_rel", True),
            cell(s, "oos_selectivity", False), cell(s, "general_loss_rel", True), cell(s, "emt_rel", True),
        ]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--out", default="runs/edit-table.jsonl")
    parser.add_argument("--row", action="append", default=[], metavar="TARGET:RULE[:PARAM=VALUE]",
                        help="only the grid rows this names (repeatable; default: the whole grid)")
    args = parser.parse_args()
    grid = [row for row in GRID if not args.row or any(matches(row, spec) for spec in args.row)]
    if not grid:
        parser.error(f"no row of the grid matches {', '.join(args.row)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.exists():
        done = {r["key"]: r for r in map(json.loads, out.read_text().splitlines()) if r}
    for row in grid:
        if key(row) in done:
            continue
        print(f"measuring {row[1]} {row[2]} {row[3]}", file=sys.stderr, flush=True)
        result = measure(args.model, row)
        done[result["key"]] = result
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    print(table([done[key(row)] for row in grid]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
