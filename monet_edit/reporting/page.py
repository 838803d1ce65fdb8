"""The report as one self-contained HTML page: inline CSS, images as data URIs, no script, no
network reference of any kind."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

from ..analysis.experts import ExpertTokens, visible

CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.5em; margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ddd; margin-top: 1.6em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top; text-align: left; }
th { background: #f4f6f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { display: block; max-width: 100%; height: auto; margin: 8px 0 16px; }
.notes li { color: #9a5b00; } .pass { color: #1e8449; font-weight: bold; } .fail { color: #c0392b; font-weight: bold; }
code, .ctx { font-family: "DejaVu Sans Mono", monospace; font-size: 0.92em; }
.ctx { white-space: pre; display: block; color: #555; }
mark { background: #f9e79f; color: #000; padding: 0 1px; }
.tok { display: inline-block; background: #eaf2f8; border-radius: 3px; padding: 0 4px; margin: 1px;
       font-family: "DejaVu Sans Mono", monospace; white-space: pre; }
"""


@dataclass
class Page:
    title: str
    subtitle: str
    facts: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    eval_summary: dict[str, Any] | None = None
    gates: list[dict] = field(default_factory=list)
    eval_figures: list[tuple[str, str]] = field(default_factory=list)
    group_figures: list[tuple[str, str]] = field(default_factory=list)
    specificity: str = ""
    experts_title: str = ""
    experts: list[tuple[ExpertTokens, float | None, float | None]] = field(default_factory=list)
    experts_source: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    recorded: dict[str, dict] = field(default_factory=dict)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def _table(rows: dict[str, Any], head: tuple[str, str] = ("", "")) -> str:
    header = f"<tr><th>{escape(head[0])}</th><th>{escape(head[1])}</th></tr>" if any(head) else ""
    body = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(_fmt(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{header}{body}</table>"


def _img(alt: str, uri: str) -> str:
    return f'<img class="plot" alt="{escape(alt)}" src="{uri}">'


def _experts_table(page: Page) -> str:
    head = ("<tr><th>#</th><th>group</th><th>expert (i, j)</th><th>score</th><th>target mean</th>"
            "<th>top tokens (hits)</th><th>contexts (weight)</th></tr>")
    rows = []
    for rank, (found, score, mean) in enumerate(page.experts, 1):
        tokens = " ".join(f'<span class="tok">{escape(visible(t["token"]))}</span>&times;{t["hits"]}'
                          for t in found.tokens())
        contexts = "".join(
            f'<span class="ctx">{escape(visible(h.left))}<mark>{escape(visible(h.token))}</mark>'
            f'{escape(visible(h.right))}  ({h.weight:.3f})</span>' for h in found.hits[:4])
        rows.append(f"<tr><td class=num>{rank}</td><td class=num>{found.group}</td>"
                    f"<td class=num>({found.i}, {found.j})</td><td class=num>{escape(_fmt(score))}</td>"
                    f"<td class=num>{escape(_fmt(mean))}</td><td>{tokens or '-'}</td>"
                    f"<td>{contexts or 'no token of the corpus routes here'}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def render(page: Page) -> str:
    parts = [f"<h1>{escape(page.title)}</h1>", f'<p class="sub">{escape(page.subtitle)}</p>',
             "<h2>Run</h2>", _table(page.facts)]
    if page.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in page.notes) + "</ul>")
    if page.eval_summary is not None:
        parts += ["<h2>Before and after</h2>", _table(page.eval_summary, ("summary", "value"))]
        if page.gates:
            gates = "".join(
                f"<tr><td><code>{escape(g['condition'])}</code></td><td class=num>{escape(_fmt(g['actual']))}</td>"
                f"<td class={'pass' if g['passed'] else 'fail'}>{'pass' if g['passed'] else 'FAIL'}</td></tr>"
                for g in page.gates)
            parts.append(f"<table><tr><th>gate</th><th>actual</th><th>result</th></tr>{gates}</table>")
        parts += [_img(f"{metric} before and after", uri) for metric, uri in page.eval_figures]
    if page.group_figures:
        parts += ["<h2>Specificity per routing group</h2>", f"<p>{escape(page.specificity)}</p>"]
        parts += [_img(alt, uri) for alt, uri in page.group_figures]
    if page.experts:
        parts += [f"<h2>{escape(page.experts_title)}</h2>", f"<p>{escape(page.experts_source)}</p>",
                  _experts_table(page)]
    parts += ["<h2>Provenance</h2>", _table(page.provenance, ("report", "")),
              _table(page.inputs, ("input", "sha256"))]
    for what, record in page.recorded.items():
        if record:
            parts.append(_table(record, (f"{what}: made by", "")))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{escape(page.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
