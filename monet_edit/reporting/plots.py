"""The report's figures, drawn with matplotlib (Agg) and embedded as base64 PNG data URIs.

PNGs carry no software or date metadata, so the same run gives the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict

import torch

from .specificity import Scores

TARGET, AFTER, BEFORE, MASKED = "#c0392b", "#2e86c1", "#aab7b8", "#111111"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def group_figure(scores: Scores, group: int, mask: torch.Tensor | None) -> str:
    """Heatmap of one group's E x E scores (masked experts outlined) beside the score histogram
    with the rule's threshold."""
    plt = _pyplot()
    values = scores.values[group].numpy()
    E = values.shape[0]
    fig, (heat, hist) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 1.15]})
    finite = values[~torch.isnan(scores.values[group]).numpy()]
    cmap = plt.get_cmap("RdBu_r" if scores.diverging else "viridis").with_extremes(bad="#eeeeee")
    if scores.diverging:
        span = max(float(abs(finite).max()) if finite.size else 1.0, 1e-9)
        image = heat.imshow(values, cmap=cmap, vmin=-span, vmax=span, interpolation="nearest")
    else:
        image = heat.imshow(values, cmap=cmap, interpolation="nearest")
    fig.colorbar(image, ax=heat, fraction=0.046, pad=0.04)
    masked = 0
    if mask is not None and bool(mask.any()):
        rows, cols = mask.nonzero(as_tuple=True)
        masked = rows.numel()
        size = max(2.0, (300 / E) ** 2 * 0.6)
        heat.scatter(cols.numpy(), rows.numpy(), s=size, marker="s", facecolors="none", edgecolors=MASKED,
                     linewidths=0.4, label=f"masked ({masked:,})")
        heat.legend(loc="upper right", fontsize=8, framealpha=0.85)
    heat.set_title(f"group {group}: specificity of each expert (i, j)", fontsize=10)
    heat.set_xlabel("j (g2 sub-expert)")
    heat.set_ylabel("i (g1 sub-expert)")
    hist.hist(finite, bins=60, color=BEFORE, edgecolor="white", linewidth=0.3, label=f"{finite.size:,} experts")
    if mask is not None and masked:
        chosen = values[mask.numpy() & ~torch.isnan(scores.values[group]).numpy()]
        hist.hist(chosen, bins=60, range=(float(finite.min()), float(finite.max())), color=TARGET,
                  alpha=0.8, label=f"masked ({masked:,})")
    if scores.threshold is not None and math.isfinite(scores.threshold):
        hist.axvline(scores.threshold, color=MASKED, linestyle="--", linewidth=1.2,
                     label=f"{scores.threshold_label} ({scores.threshold:.3g})")
    hist.set_yscale("log")
    hist.set_xlabel(scores.label, fontsize=9)
    hist.set_ylabel("experts")
    hist.set_title(f"group {group}: distribution of the score", fontsize=10)
    hist.legend(fontsize=8)
    fig.tight_layout()
    return _data_uri(fig)


def comparison_figures(rows: list[tuple[str, str, float | None, float | None]], target: str) -> list[tuple[str, str]]:
    """(metric, data URI): before/after bars of every corpus, one figure per metric."""
    plt = _pyplot()
    by_metric: dict[str, list] = defaultdict(list)
    for metric, item, before, after in rows:
        by_metric[metric].append((item, before, after))
    out = []
    for metric, items in by_metric.items():
        fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(items) + 2), 3.4))
        xs = range(len(items))
        before = [b if b is not None else math.nan for _, b, _ in items]
        after = [a if a is not None else math.nan for _, _, a in items]
        ax.bar([x - 0.2 for x in xs], before, width=0.4, color=BEFORE, label="before")
        ax.bar([x + 0.2 for x in xs], after, width=0.4, color=AFTER, label="after")
        for x, b, a in zip(xs, before, after, strict=True):
            if math.isfinite(b) and math.isfinite(a):
                ax.annotate(f"{a - b:+.3f}", (x, max(a, b)), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(list(xs), [item for item, _, _ in items], rotation=30, ha="right", fontsize=8)
        for label, (item, _, _) in zip(ax.get_xticklabels(), items, strict=True):
            if item == target:
                label.set_color(TARGET)
                label.set_fontweight("bold")
        ax.set_title(f"{metric}: before vs after (target in red)", fontsize=10)
        ax.legend(fontsize=8)
        ax.margins(y=0.15)
        fig.tight_layout()
        out.append((metric, _data_uri(fig)))
    return out
