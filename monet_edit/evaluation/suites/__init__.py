"""Evaluation suites, one module each, registered in SUITES below.

A suite prepares its data once for both models (`load`), runs on one model data-parallel over the
ranks (`run`, whose result must be the same for any number of ranks), pairs the two sides into
its entry of results.json (`combine`), and turns that entry into summary metrics that `--gate`
can name (`summarise`, declared in `metrics`). Its knobs are `params` (CLI options `--name`,
recipe keys under [eval], validation: all read from here).

Adding a suite: write `suites/NAME.py` defining `SUITE = Suite(...)` (see loss.py), then add
"NAME" to SUITES. Suite modules import torch inside functions only (`--help` stays instant).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...infra.params import Param, by_name
from ...infra.registry import Registry

SUITES = ("loss", "mcq", "toxicity", "humaneval")  # registration: module names under this package, in report order


def per_corpus(before: dict, after: dict) -> dict:
    """{corpus: {"before": ..., "after": ...}}: the entry of suites that score corpora one by one."""
    return {name: {"before": before[name], "after": after[name]} for name in before}


def rel(delta: float | None, before: float | None) -> float | None:
    return None if delta is None or not before else delta / before


@dataclass(frozen=True)
class Suite:
    name: str
    help: str
    metrics: dict[str, str]  # summary key -> meaning
    load: Callable[..., tuple[Any, dict[str, str]]]  # (target, params, tokenizer, seq_len) -> (data, fingerprints)
    run: Callable[..., Any]  # (model, tokenizer, data, params, group) -> this side's result (JSON-able)
    describe: Callable[[Any, Any], str]  # (data, params) -> what ran, for the log
    summarise: Callable[[str, Any], tuple[dict, list[str]]]  # (target name, entry) -> (metrics, notes)
    params: tuple[Param, ...] = ()
    default_for: tuple[str, ...] = ()  # target kinds that run it when --suite is not given
    requires: Callable[[Any], str | None] = field(default=lambda target: None)  # why it cannot run, or None
    combine: Callable[[Any, Any], Any] = per_corpus


REGISTRY: Registry[Suite] = Registry(__name__, SUITES, "SUITE", "--suite: unknown suite {name!r} (choose from {known})")
registry, get = REGISTRY.all, REGISTRY.get


def params() -> dict[str, Param]:
    """Every suite's parameters by name (suites may share one definition, e.g. samples)."""
    return by_name((p for s in registry().values() for p in s.params), "eval suites")


def defaults(target) -> tuple[str, ...]:
    return tuple(s.name for s in registry().values() if target.kind in s.default_for)
