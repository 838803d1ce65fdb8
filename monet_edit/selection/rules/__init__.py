"""Selection rules: which experts to mask, from profiles. One module per rule, registered in RULES.

A rule declares its name, what it needs (token labels, reference profiles, the model for held-out
losses), its parameters (infra.params.Param: the CLI options, the recipe keys under [select],
validation and the dry-run grid all come from them), the target kinds it is the default for, the
selection itself and the score the report draws. Masks are {group: bool [E, E]} for every group
of the model (True = masked).

Adding a rule: write `rules/NAME.py` defining `RULE = Rule(...)` (see skew.py), then add "NAME" to
RULES. Rule modules import torch inside functions only (`--help` stays instant).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import UsageError
from ...infra.params import Param, by_name
from ...infra.registry import Registry

RULES = ("skew", "corr", "budget", "attribution", "contrastive", "oracle")  # registration: module names under this package


@dataclass
class Context:
    """What a rule may read: the target's profile (first), the references', the checkpoint and
    how to score held-out text on it (for rules that measure losses)."""

    target: Any  # profiling.Profile
    others: list
    checkpoint: Any  # model.checkpoint.Checkpoint
    seq_len: int = 256
    batch_size: int = 8
    model: Any = None  # a loaded model to reuse, else loaded on demand
    memo: dict = field(default_factory=dict)  # what a rule computed once for several parameter values

    def cached(self, key: str, compute: Callable[[Context], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = compute(self)
        return self.memo[key]

    def load_model(self):
        if self.model is None:
            from ...model.loading import load_model

            self.model = load_model(self.checkpoint)
        return self.model


@dataclass
class Choice:
    """A rule's result: the masks, the parameters to record, and any trials it ran."""

    masks: dict
    params: dict
    trace: list[dict] = field(default_factory=list)


@dataclass
class Score:
    """The per-expert score a rule ranks by, for the report: values [groups, E, E] (NaN where
    undefined), and the line it draws (None: no threshold)."""

    values: Any
    label: str
    threshold: float | None
    threshold_label: str
    diverging: bool = True  # centred at zero (ratios, correlations) or sequential (usage)


@dataclass(frozen=True)
class Rule:
    name: str
    help: str
    params: tuple[Param, ...]
    select: Callable[..., Choice]  # (context, **params) -> Choice
    score: Callable[..., Score]  # (target, references, params, masks) -> Score
    needs_labels: bool = False  # per-token labels (only the toxicity corpus has them)
    needs_references: bool = True  # reference profiles beside the target's
    needs_model: bool = False  # runs the model on text (dry runs try its grid only when it is chosen)
    default_for: tuple[str, ...] = ()  # target kinds it is the default rule of


REGISTRY: Registry[Rule] = Registry(__name__, RULES, "RULE", "unknown rule {name!r}; choose one of {known}")
registry, get = REGISTRY.all, REGISTRY.get


def params() -> dict[str, Param]:
    """Every rule's parameters by name."""
    return by_name((p for r in registry().values() for p in r.params), "selection rules")


def default_for(kind: str) -> str:
    for rule in registry().values():
        if kind in rule.default_for:
            return rule.name
    raise RuntimeError(f"no rule is the default for target kind {kind!r}")


def resolve_params(rule: Rule, given: dict[str, Any], where: str = "") -> dict[str, Any]:
    """The rule's own parameters from `given` (None or missing: the default), validated."""
    out = {}
    for p in rule.params:
        value = given.get(p.name)
        out[p.name] = p.validate(p.default if value is None else value, f"{where}{p.name}" if where else "")
    return out


# ---------------------------------------------------------------------------- helpers the rules share


def check_same_model(profiles: list) -> None:
    fps = {p.meta.get("model_fingerprint") for p in profiles}
    if len(fps) > 1:
        names = ", ".join(str(p.meta.get("corpus")) for p in profiles)
        raise UsageError(f"profiles ({names}) were made for different models; profile them with one --model")
    if len({tuple(p.S.shape) for p in profiles}) > 1:
        raise UsageError("profiles have different shapes (groups, experts); they come from different models")


def as_masks(selected) -> dict:
    return {g: selected[g].clone() for g in range(selected.shape[0])}


PRIOR_TOKENS = 4096  # reference means are shrunk toward the pooled mean as if by this many tokens


def reference_max(others: list, prior_tokens: int = PRIOR_TOKENS):
    """max over the reference corpora of the mean routing weight per token, [groups, E, E].

    Balanced: each reference's mean is shrunk toward the pooled mean of all references,
    (S_c + K * pooled) / (n_c + K) with K = `prior_tokens`, so a small (noisy) corpus cannot
    dominate the maximum; a corpus of n >> K tokens keeps its own mean."""
    import torch

    pooled = sum(p.S for p in others) / sum(p.n for p in others)
    return torch.stack([(p.S + prior_tokens * pooled) / (p.n + prior_tokens) for p in others]).amax(0)


# ---------------------------------------------------------------------------- text behind the profiles


def corpus_ref(meta: dict) -> str:
    """How to open a profile's corpus again: its registered name, or a user corpus's path."""
    return str(meta.get("corpus_ref") or meta.get("corpus", "target"))


def profile_docs(meta: dict, part: str, *, toxic_only: bool = False) -> list[dict]:
    """The `fit` (profiled) or `holdout` documents of a profile's corpus (refused if the corpus
    changed since it was profiled). Never the eval split."""
    from ...corpora import open_corpus, split_profile_docs

    name, fingerprint = corpus_ref(meta), meta.get("corpus_fingerprint")
    corpus = open_corpus(name)
    if fingerprint is not None and corpus.fingerprint != fingerprint:
        raise UsageError(f"corpus {name} changed since it was profiled (fingerprint {corpus.fingerprint[:12]}, "
                         f"profile has {fingerprint[:12]}); profile it again")
    fit, held = split_profile_docs(corpus.load("profile"))
    docs = fit if part == "fit" else held
    return [d for d in docs if d.get("label", 0.0) >= 0.5] if toxic_only else docs


def interleave(doc_lists: list[list[dict]]) -> list[dict]:
    """Round-robin over corpora, so a token cap takes an equal share of each."""
    from itertools import chain, zip_longest

    return [d for d in chain.from_iterable(zip_longest(*doc_lists)) if d is not None]


def profile_text(ctx: Context, tokens: int, part: str = "fit"):
    """Token rows of the target's and of the references' (interleaved) profile-split text."""
    from ...model import scoring

    toxic = ctx.target.meta.get("corpus_kind") == "toxicity"
    tok = ctx.checkpoint.tokenizer
    target = scoring.rows(scoring.token_stream(tok, profile_docs(ctx.target.meta, part, toxic_only=toxic), tokens),
                          ctx.seq_len, "target profile text")
    retain = scoring.rows(scoring.token_stream(tok, interleave([profile_docs(p.meta, part) for p in ctx.others]),
                                               tokens), ctx.seq_len, "reference profile text")
    return target, retain
