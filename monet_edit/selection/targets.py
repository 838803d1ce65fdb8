"""What an edit removes (`--domain law`, `--language python`, `--toxicity`, `--corpus PATH`) and
the reference corpora its selection compares against.

Domains compare against the other 13 MMLU-Pro categories; a language against the other languages
of its family (python vs the other code languages, de vs the other natural languages); toxicity
and user corpora against the `general` mixture (used by the budget rule; corr needs no reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

KINDS = ("domain", "language", "toxicity", "corpus")


@dataclass(frozen=True)
class Target:
    kind: str  # domain | language | toxicity | corpus
    name: str  # canonical corpus name, or the user corpus path
    references: tuple[str, ...]

    @property
    def corpora(self) -> list[str]:
        return [self.name, *self.references]

    @property
    def default_rule(self) -> str:
        from . import rules

        return rules.default_for(self.kind)

    def check_rule(self, rule: str | None) -> str:
        """The rule to use (the default when None), refused before any profiling if it cannot
        apply: corr needs per-token labels, which only the toxicity corpus has."""
        from . import rules

        chosen = rules.get(rule or self.default_rule)
        if chosen.needs_labels and self.kind != "toxicity":
            raise UsageError(f"rule {chosen.name} needs token labels and {self.name} has none; use it with "
                             f"--toxicity (or choose --rule {' or '.join(r for r in rules.registry() if r != chosen.name)})")
        return chosen.name

    @property
    def label(self) -> str:
        """Short name for default output paths."""
        return Path(self.name).stem if self.kind == "corpus" else self.name


def default_references(name: str) -> tuple[str, ...]:
    """Every other corpus the tool has and can build here (siblings, the other kinds, `general`
    last): what an edit must leave alone, and what its selection compares the target with."""
    from .. import corpora

    names = [s.name for s in corpora.list_corpora() if s.name != name and s.kind != "general"]
    return tuple(n for n in [*names, "general"] if corpora.availability(n)[0])


def check_references(target: str, given: list[str]) -> tuple[str, ...]:
    """`--reference` names: registered corpora (aliases accepted) or corpus paths, not the target."""
    from .. import corpora

    out: list[str] = []
    for name in given:
        if name.endswith("@oos"):
            raise UsageError(f"--reference {name}: out-of-source eval sets are never profiled or selected on")
        try:
            ref = corpora.get_spec(name).name
        except UsageError:
            if not Path(name).expanduser().exists():
                raise
            ref = name  # a user corpus by its path
        if ref == target:
            raise UsageError(f"--reference {name}: that is the target itself")
        if ref not in out:
            out.append(ref)
    if not out:
        raise UsageError("--reference: give at least one corpus")
    return tuple(out)


def resolve(
    domain: str | None = None, language: str | None = None, toxicity: bool = False, corpus: str | None = None,
    references: list[str] | None = None,
) -> Target:
    """Exactly one of the four target options; unknown names fail with the known ones listed.
    References: `references` if given, else every other corpus (default_references)."""
    from .. import corpora

    given = [
        flag
        for flag, value in (
            ("--domain", domain),
            ("--language", language),
            ("--toxicity", toxicity),
            ("--corpus", corpus),
        )
        if value
    ]
    if len(given) != 1:
        raise UsageError(
            "give exactly one target: --domain NAME, --language NAME, --toxicity or "
            f"--corpus PATH (got {', '.join(given) if given else 'none'})"
        )
    if toxicity:
        kind, name = "toxicity", "toxicity"
    elif corpus:
        if not Path(corpus).expanduser().exists():
            raise UsageError(f"--corpus {corpus}: no such file or directory")
        kind, name = "corpus", corpus
    else:
        kind, value = ("domain", domain) if domain else ("language", language)
        spec = corpora.get_spec(value)
        if spec.kind != kind:
            raise UsageError(f"{value!r} is not a {kind}; known {kind}s are {', '.join(corpora.names(kind))}")
        name = spec.name
    refs = check_references(name, references) if references else default_references(name)
    return Target(kind, name, refs)
