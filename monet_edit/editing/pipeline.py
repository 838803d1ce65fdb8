"""`monet-edit run RECIPE`: profile -> select -> resect -> eval -> gate, from a TOML recipe.

A recipe (monet_edit/recipes/*.toml; the first line is a comment with the command that runs it):

    [target]   kind = "domain" | "language" | "toxicity" | "corpus";  name = "law" (or a path)
               references = ["math", ...]              (optional: default every other corpus)
    [model]    source = "tiny"                          (optional section; --model overrides)
    [profile]  tokens, seq_len, batch_size, dir         (dir optional: the profile cache)
    [select]   rule = "skew" | "corr" | "budget"; ratio (skew) | threshold (corr) | retain_budget (budget)
    [resect]   out = "resected-law"                     (--out overrides; relative to the working dir)
    [eval]     suites = [...], tokens, seq_len, batch_size, mcq_items, prompts, samples,
               max_new_tokens, seed                    (all but suites optional)
    [gate]     conditions = ["selectivity>=10", ...]    (optional section)

Everything is validated before any computation: unknown keys, wrong types, missing sections and
bad values are one UsageError naming the file and key. Recipes whose top-level table is [train]
belong to `monet-edit train` and are not edit recipes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import GateFailed, UsageError
from ..evaluation import gates
from ..infra import tomlconfig

REQUIRED_SECTIONS = ("target", "profile", "select", "resect", "eval")


def schema() -> dict[str, Any]:
    """The recipe's keys, types and defaults; [select] and [eval] keys come from the rule and suite
    registries (a rule's or suite's parameter is a recipe key by its name)."""
    from ..evaluation.plan import all_params
    from ..selection import rules

    return {
        "target": {"kind": str, "name": str, "references": (list, None)},
        "model": {"source": (str, "tiny")},
        "profile": {"tokens": (int, 100_000), "seq_len": (int, 256), "batch_size": (int, 8), "dir": (str, None)},
        "select": {"rule": str, **{name: (p.type, None) for name, p in rules.params().items()}},
        "resect": {"out": str},
        "eval": {"suites": list, **{name: (p.type, p.default) for name, p in all_params().items()}},
        "gate": {"conditions": (list, [])},
    }


def recipes_dir() -> Path:
    return Path(str(resources.files("monet_edit") / "recipes"))


def is_edit_recipe(path: Path) -> bool:
    """False for training recipes (top-level [train])."""
    return "train" not in tomlconfig.read(path)


def packaged() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml") if is_edit_recipe(p))


def find(recipe: str) -> Path:
    """A recipe file path, or the name of a packaged recipe (law, python, german, toxicity)."""
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise UsageError(f"{path}: not a recipe file")
    candidate = recipes_dir() / f"{recipe}.toml"
    if "/" not in recipe and candidate.is_file():
        return candidate
    raise UsageError(f"{recipe}: no such recipe file or packaged recipe (packaged: {', '.join(packaged())})")


@dataclass
class Recipe:
    path: Path
    values: dict[str, Any]
    target: Any  # targets.Target
    rule: str
    rule_params: dict[str, float]
    eval_params: Any  # evaluation.EvalParams
    conditions: list[gates.Condition]


def _strings(values: list, where: str, key: str) -> list[str]:
    for v in values:
        if not isinstance(v, str):
            raise UsageError(f"{where}: {key} must be a list of strings, got {v!r}")
    return values


@contextlib.contextmanager
def _naming(where: str, section: str) -> Iterator[None]:
    """Prefix a UsageError from shared validators with the recipe file and section."""
    try:
        yield
    except UsageError as exc:
        if str(exc).startswith(where):
            raise
        raise UsageError(f"{where}: {section}: {exc}") from None


def load(recipe: str | Path) -> Recipe:
    """Read and validate a recipe; nothing is computed."""
    from ..evaluation.plan import EvalParams, check_params, parse_suites
    from ..selection import rules, targets

    path = find(str(recipe))
    where = str(path)
    data = tomlconfig.read(path)
    if "train" in data:
        raise UsageError(f"{where}: a training recipe ([train]); run it with `monet-edit train {path}`")
    for section in REQUIRED_SECTIONS:
        if section not in data:
            raise UsageError(f"{where}: missing section [{section}]")
    values = tomlconfig.validate(data, schema(), where)
    t = values["target"]
    if t["kind"] not in targets.KINDS:
        raise UsageError(f"{where}: target.kind must be one of {', '.join(targets.KINDS)}, got {t['kind']!r}")
    if t["kind"] == "toxicity" and t["name"] != "toxicity":
        raise UsageError(f"{where}: target.name must be \"toxicity\" for kind toxicity, got {t['name']!r}")
    with _naming(where, "target"):
        refs = None if t["references"] is None else _strings(t["references"], where, "target.references")
        target = targets.resolve(**{t["kind"]: True if t["kind"] == "toxicity" else t["name"]}, references=refs)
    sel = values["select"]
    chosen = rules.registry().get(sel["rule"])
    if chosen is None:
        raise UsageError(f"{where}: select.rule must be one of {', '.join(rules.registry())}, got {sel['rule']!r}")
    for other in rules.registry().values():
        for p in other.params:
            if p not in chosen.params and sel[p.name] is not None:
                raise UsageError(f"{where}: select.{p.name} applies to rule {other.name}, not {chosen.name}")
    rule_params = rules.resolve_params(chosen, sel, where=f"{where}: select.")
    for name in ("tokens", "seq_len", "batch_size"):
        if values["profile"][name] < 1:
            raise UsageError(f"{where}: profile.{name} must be at least 1, got {values['profile'][name]}")
    ev = dict(values["eval"])
    with _naming(where, "eval"):
        suites = parse_suites(",".join(_strings(ev.pop("suites"), where, "eval.suites")), target)
        params = EvalParams(suites=suites, **ev)
        check_params(params)
    with _naming(where, "gate.conditions"):
        conditions = [c for expr in _strings(values["gate"]["conditions"], where, "gate.conditions")
                      for c in gates.parse(expr, suites)]
    return Recipe(path, values, target, sel["rule"], rule_params, params, conditions)


def run(recipe: str | Path, *, model: str | None = None, out: str | None = None, force: bool = False,
        device: str | None = None, command: str | None = None, log: Callable[[str], None] = lambda _: None,
        show: Callable[[dict], None] = lambda _: None) -> dict:
    """Run a recipe end to end; returns the evaluation results (GateFailed after writing them)."""
    from ..evaluation import results as report
    from ..evaluation.compare import evaluate
    from ..infra import provenance
    from ..model import checkpoint
    from ..selection import rules
    from ..selection import select as selection
    from . import resect

    rec = load(recipe)
    base = checkpoint.of(model or rec.values["model"]["source"])
    config = base.config
    out_dir = Path(out or rec.values["resect"]["out"])
    resect.check_output(out_dir, base.dir, force)
    prof = rec.values["profile"]
    log(f"profile: {', '.join(rec.target.corpora if rules.get(rec.rule).needs_references else [rec.target.name])}")
    sel = selection.select(base, rec.target, rec.rule, tokens=prof["tokens"], seq_len=prof["seq_len"],
                           batch_size=prof["batch_size"], profiles_dir=prof["dir"], device=device, **rec.rule_params)
    masked = sum(sel.counts(config))
    log(f"select: {rec.rule} {rec.rule_params} masks {masked} of {config.num_experts * config.num_groups} experts")
    if masked == 0 and rec.conditions:
        raise GateFailed(f"{rec.path}: empty selection, rule {rec.rule} {rec.rule_params} masks no expert; "
                         f"gates cannot pass (nothing written)")
    if masked == 0:
        log("warning: empty selection (0 experts masked); continuing without gates")
    results = evaluate(base, base, rec.target, rec.eval_params, edited_mask=sel.masks, device=device, log=log)
    results["recipe"] = {"path": str(rec.path), "sha256": provenance.sha256_file(rec.path), "values": rec.values}
    results["selection"] = {"rule": rec.rule, "params": sel.params, "counts": sel.counts(config),
                            "masked": masked, "sources": sel.sources}
    results["gates"] = gates.check(rec.conditions, results["summary"])
    written = resect.resect(base, sel.masks, out_dir, force=force,
                            command=command or f"monet-edit run {rec.path}", mask_meta=sel.meta(config),
                            eval_summary=report.finite(results["summary"]))
    results["edited"].update(source=str(written), dir=str(written.resolve()))
    report.write(results, written / "eval")
    show(results)
    gates.enforce(results["gates"])
    return results
