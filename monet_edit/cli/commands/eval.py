"""`monet-edit eval`: before/after comparison of an edited model with its base, with gates."""

from __future__ import annotations

import typer

from ...evaluation import suites
from ...evaluation.gates import metrics
from ...evaluation.plan import all_params
from .. import options as opt

ORDER = 50

GATE_HELP = ("Comma-separated conditions 'metric OP number' (OP: >=, <=, >, <, ==); exit 3 when one fails. "
             "Metrics (suite): " + "; ".join(f"{k} ({s or 'always'}): {d}" for k, (s, d) in metrics().items()))


SUITE_HELP = ("Comma-separated suites: " + "; ".join(f"{s.name} ({s.help})" for s in suites.registry().values())
              + ". Default: " + ", ".join(f"{kind}: {'+'.join(s.name for s in suites.registry().values() if kind in s.default_for)}"
                                          for kind in ("domain", "language", "toxicity", "corpus")) + ".")


@opt.with_params(lambda: all_params().values(), into="params")
def eval_command(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", help="Edited model (default: the checkpoint in the current "
                              "directory, else tiny)."),
    base: str = typer.Option(None, "--base", help="Base model (default: from the edited model's edit record)."),
    target: str = typer.Option(None, "--target", help="Target corpus (default: from the edit record)."),
    reference: list[str] = typer.Option(None, "--reference", help="A corpus whose change counts among the "
                                        "others' (repeat the option; default: every other corpus, general "
                                        "included)."),
    suite: str = typer.Option(None, "--suite", help=SUITE_HELP),
    lm_eval: str = typer.Option(None, "--lm-eval", help="Comma-separated lm-evaluation-harness tasks (names, "
                                "or tasks of --lm-eval-include YAMLs), run on both models; needs the optional "
                                "lm-eval extra."),
    lm_eval_include: str = typer.Option(None, "--lm-eval-include", help="Directory of lm-eval task YAMLs (over "
                                        "local data files they run offline)."),
    lm_eval_limit: int = typer.Option(None, "--lm-eval-limit", help="Documents per lm-eval task (default: all)."),
    device: str = opt.DEVICE,
    nproc: int = opt.NPROC,
    resume: bool = typer.Option(False, "--resume", help="Keep the suites an interrupted run finished "
                                "(journalled beside --out; default: start over)."),
    gate: str = typer.Option(None, "--gate", help=GATE_HELP),
    out: str = typer.Option(None, "--out", help="Results directory (default: <model>/eval for a resected "
                            "checkpoint, else ./eval-<model>); an existing one needs --force."),
    force: bool = typer.Option(False, "--force", help="Replace an existing results directory."),
    json_out: bool = typer.Option(False, "--json", help="Print the results JSON on stdout."),
    params: dict = None,
) -> None:
    """Compare an edited model with its base on held-out eval splits (loss, multiple choice, toxicity).

    Loss and next-token accuracy per corpus of the edit's kind plus general, multiple choice per
    MMLU category, toxicity of sampled continuations. Writes results.json and results.md; --gate
    turns the summary into an exit code.
    """
    from ...evaluation import execute, prepare
    from ...evaluation import results as report
    from ...evaluation.harness import parse_tasks
    from ...infra import distributed
    from ...infra.console import emit_json, err

    group = distributed.init(device, nproc)  # joins the job under torchrun; nothing otherwise
    # Bad input fails here, once: checked by rank 0 under torchrun, before --nproc launches ranks.
    plan = group.on_main(lambda: prepare(
        model, base, target, references=reference or None, suites=suite, gate=gate, out=out, force=force, device=device, resume=resume,
        lm_eval=parse_tasks(lm_eval), lm_eval_include=lm_eval_include, lm_eval_limit=lm_eval_limit, **params))
    opt.maybe_launch(ctx, nproc)
    err.print(f"eval {plan.model} vs base {plan.base}: {plan.target.kind} {plan.target.name}, "
              f"suites {','.join(plan.params.suites)}"
              + (f", lm-eval {','.join(plan.params.lm_eval)}" if plan.params.lm_eval else ""))

    def show(res: dict) -> None:
        report.show(res)
        err.print(f"wrote {plan.out / report.RESULTS} and {report.MARKDOWN}")
        if json_out:
            emit_json(report.finite(res))

    execute(plan, log=err.print, show=show)


def register(app: typer.Typer) -> None:
    app.command(name="eval")(eval_command)
