"""`monet-edit report RUN`: one self-contained HTML page about a profile, a mask, an edit or an eval.

The page shows what the run provides (runs.py): per routing group an E x E heatmap of the
target's specificity with the masked experts outlined and the score's distribution with the
rule's threshold (specificity.py); before/after bars of every corpus from eval results; a table
of the top masked (or most specific) experts with the tokens and contexts that route to them
most (experts.py); and the provenance of the page and of every input. No torch at import time.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .page import Page

DEFAULT_SEQ_LEN = 128


def check_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise UsageError(f"{out}: is a directory (give an .html file path with --out)")
    if out.exists() and not force:
        raise UsageError(f"{out}: output file exists (use --force to replace it)")


def default_out(run_path: str | Path) -> Path:
    from .runs import run_name

    return Path(f"report-{run_name(Path(run_path).resolve())}.html")


def write_report(run_path: str | Path, out: str | Path, *, model: str | None = None, corpus: str | None = None,
                 tokens: int = 10_000, top_experts: int = 10, force: bool = False, log=lambda _: None) -> Path:
    """Read the run, draw its parts and write the page atomically to `out`."""
    from ..infra import atomic, provenance
    from . import page as page_mod
    from . import plots, runs, specificity

    out = Path(out)
    check_out(out, force)
    run = runs.open_run(run_path)
    if model is not None:
        run.model = model
    page = Page(title=f"monet-edit report: {run.name}", subtitle=f"{run.kind} run {run.path}",
                facts={"kind": run.kind, **run.facts}, notes=run.notes, inputs=run.inputs, recorded=run.recorded)
    scores = None
    if run.target_profile is not None:
        scores = specificity.compute(run.rule, run.params, run.target_profile, run.references, run.masks)
        page.specificity = (f"Score: {scores.label}. "
                            + ("Outlined cells are the masked experts. " if run.masks else "")
                            + "Grey cells: experts the target never routes to."
                            + (f" Threshold: {scores.threshold_label} = {scores.threshold:.3g}."
                               if scores.threshold is not None else ""))
        for g in range(scores.values.shape[0]):
            page.group_figures.append((f"group {g} specificity heatmap and score distribution",
                                       plots.group_figure(scores, g, run.masks.get(g) if run.masks else None)))
        log(f"drew {len(page.group_figures)} routing group(s)")
    elif run.masks is not None:
        page.notes.append("no target profile: the masks are counted but specificity cannot be drawn")
    if run.results is not None:
        from ..evaluation.results import comparison_rows

        res = run.results
        page.eval_summary, page.gates = res.get("summary", {}), res.get("gates", [])
        page.eval_figures = plots.comparison_figures(comparison_rows(res), res["target"]["name"])
        page.notes += [f"eval: {n}" for n in res.get("notes", [])]
    chosen = specificity.ranking(scores, run.target_profile, run.masks, top_experts) if (
        scores is not None or run.masks) else []
    if chosen:
        _experts_section(page, run, chosen, scores, corpus=corpus, tokens=tokens, log=log)
    page.provenance = dict(provenance.record(), run=str(run_path), run_kind=run.kind,
                           model=run.model, top_tokens_corpus=corpus or run.target, tokens=tokens)
    return atomic.write_text(out, page_mod.render(page))


def _experts_section(page: Page, run, chosen: list[tuple[int, int, int]], scores, *, corpus: str | None,
                     tokens: int, log) -> None:
    """The top-experts table; a model or corpus that cannot be opened becomes a note."""
    from ..analysis import experts
    from ..model import checkpoint, loading

    page.experts_title = ("Top masked experts" if run.masks else "Most specific experts") + " and their tokens"
    corpus = corpus or run.target
    if run.model is None or corpus is None:
        page.notes.append("top tokens not shown: the run records no model or target corpus (give --model/--corpus)")
        return
    try:
        ckpt = checkpoint.of(run.model)
        config = ckpt.config
        seq_len = min(int((run.target_profile.meta if run.target_profile else {}).get("seq_len", DEFAULT_SEQ_LEN)),
                      config.max_position_embeddings)
        net, tok = loading.load_model(ckpt), ckpt.tokenizer
        rows, _ = experts.corpus_rows(tok, corpus, tokens=tokens, seq_len=seq_len)
    except UsageError as exc:
        page.notes.append(f"top tokens not shown: {exc}")
        return
    found = experts.top_tokens(net, tok, rows, chosen)
    log(f"top tokens of {len(chosen)} expert(s) over {rows.numel():,} tokens of {corpus}")
    mean = run.target_profile.mean() if run.target_profile is not None else None
    for f in found:
        score = float(scores.values[f.group, f.i, f.j]) if scores is not None else None
        page.experts.append((f, score, float(mean[f.group, f.i, f.j]) if mean is not None else None))
    order = "the target's mean routing weight" if run.masks else "score, then the target's mean routing weight"
    page.experts_source = (f"Ranked by {order}; tokens and contexts from {corpus} (profile split, {rows.numel():,} "
                           f"tokens, rows of {seq_len}) on {run.model}; weight = G_ij = sum_h g1[h,i] g2[h,j]. "
                           f"Same as `monet-edit experts {run.model} --group G --expert I,J --corpus {corpus}`.")
