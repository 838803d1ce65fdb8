"""The out-of-source (OOS) evaluation sets: for every embedded corpus a set of text from another
source (another project, author or genre), and `retain@oos`, a mixture of all of them.

An edit is profiled on a corpus's profile split; its in-source eval split comes from the same
source and flatters it. `law@oos` etc. are read only by evaluation: `registry.get_spec` refuses
them, so no profile, reference, selection or training can name one (see oos_store for the
content guard). Every set is built offline from Debian packages listed in
scripts/system-packages.txt; none of them carries files an embedded corpus reads.

Nothing here reads a set; `availability` only checks that the files a build needs are present.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from ..errors import UsageError
from . import lexicon, manpages, registry, sources
from .lexicon import WordnetSelection
from .registry import CorpusSpec

SUFFIX = "@oos"
RETAIN = "retain@oos"
CAP_CHARS = 250_000  # text per set: eval stays quick (about 60k tokens)
RETAIN_CAP_CHARS = 500_000
LICENCE_DIR = Path("/usr/share/common-licenses")
FORTUNE_SKIP = {"asciiart", "ascii-art", "art"}


@dataclass(frozen=True)
class Part:
    """One source of a set. `read` yields documents {"id", "text", ...} in the order they are
    taken (a stable hash order, so a capped set is a uniform sample, not the first letters of a
    dictionary); `pack` joins consecutive short documents (definitions) into ~1.5 KB documents."""

    key: str
    source: str  # where it comes from, e.g. "debian:dict-gcide"
    what: str  # which part of that source
    read: Callable[[], Iterable[dict]]
    present: Callable[[], bool]
    install: str
    pack: bool = False
    share: float = 1.0

    def label(self) -> str:
        return f"{self.source} ({self.what})"


@dataclass(frozen=True)
class OosSpec:
    name: str  # "<target>@oos"
    target: str  # the embedded corpus it evaluates out of source ("general" for retain@oos)
    description: str
    parts: tuple[Part, ...]
    cap_chars: int = CAP_CHARS
    source_label: str = ""  # shown instead of the parts' sources

    @property
    def source(self) -> str:
        return self.source_label or " + ".join(dict.fromkeys(p.source for p in self.parts))

    def corpus_spec(self) -> CorpusSpec:
        """A CorpusSpec of the target's kind and family (what evaluation needs to know)."""
        target = registry.get_spec(self.target)
        return CorpusSpec(self.name, target.kind, self.source, self.description, family=target.family)


def stable_order(docs: Iterable[dict]) -> list[dict]:
    return sorted(docs, key=lambda d: sources.stable_hash(d["id"]))


# ----------------------------------------------------------------------------- part makers


def _dictd(db: str, what: str, share: float = 1.0) -> Part:
    def read() -> list[dict]:
        return stable_order({"id": k, "text": lexicon.dictd_text(t)} for k, _, t in lexicon.dictd_entries(db))

    return Part(db, f"debian:dict-{db}", what, read, lambda: lexicon.dictd_path(db) is not None,
                f"apt-get install dict-{db}", pack=True, share=share)  # fmt: skip


def _gcide(domain: str, share: float = 1.0) -> Part:
    labels = _TOPIC_LABELS[domain][0]
    shown = ", ".join(f"({x})" for x in labels[:6]) + (", ..." if len(labels) > 6 else "")
    return Part("gcide", "debian:dict-gcide", f"senses labelled {shown}",
                lambda: stable_order(lexicon.gcide_senses(labels, _claimed_before(domain)[0])),
                lambda: lexicon.dictd_path("gcide") is not None, "apt-get install dict-gcide",
                pack=True, share=share)  # fmt: skip


def _wordnet(domain: str, share: float = 1.0) -> Part:
    sel = _TOPIC_LABELS[domain][1]

    def read() -> list[dict]:
        claimed = _claimed_before(domain)[1]
        return stable_order(d for d in lexicon.wordnet_glosses(sel) if d["id"] not in claimed)

    return Part("wordnet", "debian:wordnet-base", f"WordNet 3.0 glosses: {sel.describe()}", read,
                lexicon.wordnet_available, "apt-get install wordnet-base", pack=True, share=share)  # fmt: skip


@cache
def _selected(domain: str) -> tuple[frozenset[str], frozenset[str]]:
    """(GCIDE ids, WordNet ids) domain `domain` selects before any is claimed by another."""
    labels, sel = _TOPIC_LABELS[domain]
    return frozenset(lexicon.gcide_sense_ids(labels)), frozenset(d["id"] for d in lexicon.wordnet_glosses(sel))


@cache
def _claimed_before(domain: str) -> tuple[frozenset[str], frozenset[str]]:
    """(GCIDE ids, WordNet ids) the domains before `domain` (registry order) take: a definition
    that fits several domains belongs to the first, so the domain sets are disjoint."""
    before = list(registry.DOMAINS)[: list(registry.DOMAINS).index(domain)]
    gcide = frozenset().union(*(_selected(n)[0] for n in before))
    wordnet = frozenset().union(*(_selected(n)[1] for n in before))
    return gcide, wordnet


def _paged(pages: Iterable[tuple[str, Callable[[], str]]]) -> Iterator[dict]:
    """Documents of long texts (id, reader): texts in stable-hash order of their ids, each read
    only when reached and cut into paragraph packs."""
    for rel, read in sorted(pages, key=lambda p: sources.stable_hash(p[0])):
        for i, doc in enumerate(sources.chunk_paragraphs(read())):
            yield {"id": f"{rel}:{i:04d}", "text": doc}


def _manpage_texts(package: str) -> Iterator[tuple[str, Callable[[], str]]]:
    for path in manpages.manpage_files(package):
        yield manpages.manpage_id(path), lambda path=path: manpages.manpage_text(path)


def _manpages(package: str, language: str, share: float = 1.0) -> Part:
    return Part("man", f"debian:{package}", f"{language} translations of manual pages (manpages-l10n)",
                lambda: _paged(_manpage_texts(package)),
                lambda: bool(manpages.manpage_files(package)), f"apt-get install {package}",
                share=share)  # fmt: skip


def _fortune_dir(lang: str) -> Path:
    return sources.FORTUNE_DIR / lang


def _fortune_files(lang: str) -> list[Path]:
    d = _fortune_dir(lang)
    if not d.is_dir():
        return []
    return [p for p in sorted(d.iterdir())
            if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
            and p.name.split(".")[0] not in FORTUNE_SKIP]  # fmt: skip


def _fortune_docs(lang: str) -> list[dict]:
    out = []
    for path in _fortune_files(lang):
        raw = path.read_bytes().decode("utf-8", errors="replace")
        for i, text in enumerate(re.split(r"^%\s*$", raw, flags=re.M)):
            text = text.strip("\n").rstrip()
            if len(text.strip()) >= 8:
                out.append({"id": f"{lang}/{path.name}:{i:05d}", "text": text[: sources.FORTUNE_MAX_CHARS]})
    return stable_order(out)


def _fortunes(lang: str, language: str, share: float = 1.0) -> Part:
    return Part("fortunes", f"debian:fortunes-{lang}",
                f"{language} quotations, poems, proverbs and jokes ({_fortune_dir(lang)})",
                lambda: _fortune_docs(lang), lambda: bool(_fortune_files(lang)),
                f"apt-get install fortunes-{lang}", pack=True, share=share)  # fmt: skip


def _licence_files() -> list[Path]:
    if not LICENCE_DIR.is_dir():
        return []
    return [p for p in sorted(LICENCE_DIR.iterdir()) if p.is_file() and not p.is_symlink()]


def _licences(share: float = 1.0) -> Part:
    return Part("licences", "debian:base-files", f"licence texts in {LICENCE_DIR} (GPL, Apache, MPL, ...)",
                lambda: _paged((p.name, lambda p=p: p.read_text(encoding="utf-8", errors="replace"))
                               for p in _licence_files()),
                lambda: bool(_licence_files()), "apt-get install base-files", share=share)  # fmt: skip


def _code(key: str, packages: tuple[str, ...], what: str, roots: Callable[[], list[str]],
          exts: tuple[str, ...], **kw) -> Part:  # fmt: skip
    source = "debian:" + " + ".join(packages)
    src = sources.CodeSource(key, source, roots, exts, "apt-get install " + " ".join(packages), **kw)
    return Part(key, source, what, lambda: src.documents(budget=10**12), lambda: src.availability()[0],
                src.install)  # fmt: skip


def _perl_files() -> list[Path]:
    """Perl modules and scripts of GNU Automake and Autoconf (dpkg's file lists)."""
    out = []
    for path in manpages.package_files("automake") + manpages.package_files("autoconf"):
        if not path.is_file() or path.is_symlink():
            continue
        if path.suffix == ".pm":
            out.append(path)
        elif path.parent.name == "bin":
            with open(path, "rb") as fh:
                head = fh.read(64)
            if head.startswith(b"#!") and b"perl" in head.split(b"\n")[0]:
                out.append(path)
    return out


def _perl_docs() -> Iterator[dict]:
    for path in sorted(_perl_files(), key=lambda p: sources.stable_hash(p.as_posix())):
        text = sources._strip_pod(path.read_bytes().decode("utf-8", errors="replace"))
        for i, piece in enumerate(sources.chunk_lines(text, sources.CODE_DOC_CHARS)):
            yield {"id": f"{path.as_posix().lstrip('/')}#{i}", "text": piece}


def _globbed(*patterns: str) -> Callable[[], list[str]]:
    return lambda: sorted(d for p in patterns for d in glob.glob(p) if os.path.isdir(d))


DJANGO = "/usr/lib/python3/dist-packages/django"
GOCODE = "/usr/share/gocode/src/github.com"
CARGO = "/usr/share/cargo/registry"


# ----------------------------------------------------------------------------- the sets

_TOPIC_LABELS: dict[str, tuple[tuple[str, ...], WordnetSelection]] = {
    "biology": (("Biol.", "Biology", "Zool.", "Zool", "Bot.", "Physiol.", "Genetics", "Paleon.", "Anthropol."),
                WordnetSelection(topics=("biology", "botany", "zoology", "genetics", "physiology", "ecology",
                                         "microbiology", "embryology"),
                                 lexfiles=("noun.animal", "noun.plant"))),
    "business": (("Com.", "Bookkeeping", "Stock Exchange", "Finance"),
                 WordnetSelection(topics=("commerce", "commercial_enterprise", "stock_exchange", "accounting",
                                          "banking", "business", "tax"),
                                  hyponyms_of=("commerce/noun.act", "management/noun.act",
                                               "business/noun.group", "accounting/noun.act"))),
    "chemistry": (("Chem.", "Old Chem.", "Biochem.", "Physiol. Chem.", "Med. Chem.", "Metal."),
                  WordnetSelection(topics=("chemistry", "biochemistry"), lexfiles=("noun.substance",))),
    "computer_science": (("Computers",), WordnetSelection(topics=("computer_science", "computer"))),
    "economics": (("Polit. Econ.", "Finance", "Com."),
                  WordnetSelection(topics=("economics", "finance", "tax", "banking"),
                                   lexfiles=("noun.possession",))),
    "engineering": (("Elec.", "Electronics", "Teleg.", "Mach.", "Mech.", "Engin.", "Steam Engine",
                     "Steam Boilers", "Magnetism"),
                    WordnetSelection(topics=("electronics", "electricity", "telecommunication", "engineering",
                                             "mechanics", "electrical_engineering"),
                                     hyponyms_of=("circuit/noun.artifact", "electrical_device/noun.artifact",
                                                  "electricity/noun.phenomenon"))),
    "health": (("Med.", "Anat.", "Surg.", "Pharm.", "Med. Chem."),
               WordnetSelection(topics=("medicine", "anatomy", "pathology", "surgery", "pharmacology",
                                        "dentistry", "obstetrics", "immunology", "virology"),
                                lexfiles=("noun.body",), hyponyms_of=("disease/noun.state",))),
    "history": (("Eccl. Hist.", "Eng. Hist.", "Rom. Antiq.", "Gr. Antiq.", "Antiq.", "Jewish Antiq.",
                 "Anc. Armor", "Feudal Law"),
                WordnetSelection(topics=("history", "antiquity", "Middle_Ages"),
                                 instances=("noun.person", "noun.act", "noun.event", "noun.time"))),
    "law": (("Law", "Law.", "Eng. Law", "Scots Law", "Civil Law", "Old Law", "Feudal Law", "Rom. Law",
             "Eccl. Law"),
            WordnetSelection(topics=("law",))),
    "math": (("Math.", "Geom.", "Alg.", "Arith.", "Trig.", "Calc.", "Quaternions"),
             WordnetSelection(topics=("mathematics", "statistics", "geometry", "arithmetic", "algebra"),
                              lexfiles=("noun.shape",))),
    "other": (("Geography", "Geog.", "Phys. Geog.", "Politics"),
              WordnetSelection(topics=("politics", "government", "sociology", "diplomacy"),
                               instances=("noun.location", "noun.group"))),
    "philosophy": (("Logic", "Metaph.", "Philos.", "Theol.", "Ethics", "Rhet."),
                   WordnetSelection(topics=("philosophy", "logic", "ethics", "theology", "religion"),
                                    hyponyms_of=("philosophy/noun.cognition", "doctrine/noun.cognition"))),
    "physics": (("Physics", "Astron.", "Opt.", "Optics", "Magnetism", "Meteor."),
                WordnetSelection(topics=("physics", "astronomy", "optics", "cosmology", "nuclear_physics",
                                         "thermodynamics"),
                                 lexfiles=("noun.phenomenon",))),
    "psychology": (("Psychol.", "Phren."),
                   WordnetSelection(topics=("psychology", "psychiatry", "psychoanalysis", "psychophysics",
                                            "neurology"),
                                    lexfiles=("noun.feeling", "noun.motive"),
                                    hyponyms_of=("mental_disorder/noun.state", "psychological_state/noun.state"))),
}  # fmt: skip

_LANGUAGE_PAGES = {"de": "manpages-de", "fr": "manpages-fr", "es": "manpages-es", "it": "manpages-it",
                   "pt": "manpages-pt-br"}  # fmt: skip
_FORTUNE_LANGUAGES = ("de", "es")  # fortunes-it and fortunes-br install into the English fortunes dir


TOXIC_USAGE = ("obscenity", "vulgarism", "ethnic_slur", "disparagement", "slang", "colloquialism")
# What GCIDE itself says of a word it considers coarse (usage labels and the words of its definitions).
_TOXIC_HINTS = ("[low", "[vulgar", "[slang", "[cant", "[colloq", "vulgar", "obscene", "offensive", "contemptuous",
                "opprobrious", "abusive", "insult", "reproach", "derogatory", "disparag", "slur")  # fmt: skip


def _toxicity_parts() -> tuple[Part, ...]:
    present = lambda: lexicon.dictd_path("gcide") is not None and lexicon.wordnet_available()  # noqa: E731
    what = "definitions from GCIDE and WordNet 3.0, scored by the weak scorer"
    install = "apt-get install dict-gcide wordnet-base"
    return (
        Part("toxic", "debian:dict-gcide + wordnet-base", f"{what}: score >= 0.5 among the entries the "
             "dictionaries mark vulgar, slang, offensive or disparaging", lambda: _scored_lexicon()[0],
             present, install),
        Part("nontoxic", "debian:dict-gcide + wordnet-base", f"{what}: as many entries scoring < 0.5",
             lambda: _scored_lexicon()[1], present, install),
    )  # fmt: skip


def _marked(text: str) -> bool:
    low = text.lower()
    return any(h in low for h in _TOXIC_HINTS)


def _lexicon_entries() -> list[dict]:
    """Every GCIDE entry's first block and every WordNet synset (raw text; "marked" when the
    dictionary itself calls it vulgar, slang, offensive or the like)."""
    docs = []
    for key, _, text in lexicon.dictd_entries("gcide"):
        first = text.split("\n\n")[0]
        docs.append({"id": f"gcide/{key}", "raw": first, "marked": _marked(text[:800])})
    syn = lexicon.wordnet()
    for key, s in syn.items():
        usage = {syn[t].words[0] for sym, t in s.pointers if sym == ";u" and t in syn}
        docs.append({"id": f"wordnet/{key}", "text": s.text, "marked": bool(usage & set(TOXIC_USAGE))})
    return docs


def _scored(docs: list[dict]) -> list[dict]:
    from .labels import score_texts

    out = [{"id": d["id"], "text": d.get("text") or lexicon.gcide_clean(d["raw"])[:600]} for d in docs]
    out = [d for d in out if len(d["text"]) >= 20]
    return [{**d, "label": round(s, 4)} for d, s in zip(out, score_texts([d["text"] for d in out]), strict=True)]


@lru_cache(maxsize=1)
def _scored_lexicon() -> tuple[list[dict], list[dict]]:
    """(toxic, non-toxic) documents with the weak scorer's score in "label": the toxic ones among
    the entries the dictionaries themselves mark, then as many non-toxic ones from a stable-hash
    sample of the other entries."""
    entries = stable_order(_lexicon_entries())
    toxic = [d for d in _scored([d for d in entries if d["marked"]]) if d["label"] >= 0.5]
    sample = [d for d in entries if not d["marked"]][: 3 * len(toxic)]
    nontoxic = [d for d in _scored(sample) if d["label"] < 0.5][: len(toxic)]
    return toxic, nontoxic


def _domain(name: str) -> OosSpec:
    parts: tuple[Part, ...]
    if name == "law":
        parts = (_licences(0.5), _gcide(name, 0.3), _wordnet(name, 0.2))
        what = "software licence texts, and law definitions from two dictionaries"
    else:
        parts = (_gcide(name), _wordnet(name))
        what = "definitions from two dictionaries (GCIDE, from Webster's 1913, and WordNet 3.0)"
    category = registry.DOMAINS[name]
    return OosSpec(f"{name}{SUFFIX}", name, f"{category}: {what}, not exam questions", parts)


def _computer_science() -> OosSpec:
    return OosSpec(
        f"computer_science{SUFFIX}", "computer_science",
        "computer science: the Free On-line Dictionary of Computing (FOLDOC) and WordNet glosses, "
        "not exam questions",
        (_dictd("foldoc", "FOLDOC entries", 0.85), _wordnet("computer_science", 0.15)),
    )  # fmt: skip


def _code_sets() -> list[OosSpec]:
    js_root = f"{DJANGO}/contrib/admin/static/admin/js"
    return [
        OosSpec("python@oos", "python", "Python: Django 3.2 (a third-party web framework), not the standard library",
                (_code("django", ("python3-django",), "Django's *.py", lambda: [DJANGO], (".py",),
                       skip_dirs=("locale",)),)),
        OosSpec("c@oos", "c", "C: gnulib's portability library sources (*.c), not the headers in /usr/include",
                (_code("gnulib", ("gnulib",), "/usr/share/gnulib/lib/*.c", lambda: ["/usr/share/gnulib/lib"],
                       (".c",)),)),
        OosSpec("go@oos", "go", "Go: goldmark (Markdown) and BurntSushi/toml, not the Go standard library",
                (_code("gocode", ("golang-github-yuin-goldmark-dev", "golang-github-burntsushi-toml-dev"), "goldmark and toml sources (*.go)",
                       _globbed(f"{GOCODE}/yuin/goldmark", f"{GOCODE}/BurntSushi/toml"), (".go",),
                       skip_dirs=("testdata",)),)),
        OosSpec("rust@oos", "rust", "Rust: the regex, regex-syntax and serde crates, not the Rust standard library",
                (_code("crates", ("librust-regex-dev", "librust-serde-dev"), "regex, regex-syntax, serde crates (*.rs)",
                       _globbed(f"{CARGO}/regex-1.*", f"{CARGO}/regex-syntax-*", f"{CARGO}/serde-1.*"),
                       (".rs",)),)),
        OosSpec("perl@oos", "perl", "Perl: GNU Automake and Autoconf modules and scripts, not the Perl distribution",
                (Part("autotools", "debian:automake + autoconf", "Perl modules and scripts (POD removed)",
                      _perl_docs, lambda: bool(_perl_files()), "apt-get install automake autoconf"),)),
        OosSpec("javascript@oos", "javascript",
                "JavaScript: Django admin scripts with their bundled select2 and XRegExp (not minified), "
                "not CodeMirror or jQuery UI",
                (_code("django-admin", ("python3-django",), "django/contrib/admin/static/admin/js (*.js)",
                       lambda: [js_root], (".js",), skip_dirs=("jquery", "i18n"), skip_suffixes=(".min.js",),
                       reject=sources._minified, min_files=10),)),
    ]  # fmt: skip


def _language_sets() -> list[OosSpec]:
    out = [OosSpec("en@oos", "en",
                   "English: The Devil's Dictionary (Ambrose Bierce, 1911) and the Jargon File, "
                   "not the Debian Reference",
                   (_dictd("devil", "The Devil's Dictionary", 0.4), _dictd("jargon", "The Jargon File", 0.6)))]
    for code, package in _LANGUAGE_PAGES.items():
        lang = registry.NATURAL[code]
        parts: tuple[Part, ...] = (_manpages(package, lang),)
        what = "translated manual pages"
        if code in _FORTUNE_LANGUAGES:
            parts = (_fortunes(code, lang, 0.5), _manpages(package, lang, 0.5))
            what = "quotations, poems and jokes (fortunes) and translated manual pages"
        note = " (Brazilian Portuguese)" if code == "pt" else ""
        out.append(OosSpec(f"{code}{SUFFIX}", code, f"{lang}{note}: {what}, not the Debian Reference", parts))
    return out  # fmt: skip


def _retain(specs: list[OosSpec]) -> OosSpec:
    from .oos_store import retain_part

    return OosSpec(RETAIN, "general",
                   "equal shares of every other out-of-source set (every domain, code and natural "
                   "language, toxicity); each document names its set in 'set'",
                   tuple(retain_part(s) for s in specs), cap_chars=RETAIN_CAP_CHARS,
                   source_label="mixture of the out-of-source sets")  # fmt: skip


@lru_cache(maxsize=1)
def _specs() -> tuple[OosSpec, ...]:
    by_target: dict[str, OosSpec] = {}
    for name in registry.DOMAINS:
        by_target[name] = _computer_science() if name == "computer_science" else _domain(name)
    for spec in _code_sets() + _language_sets():
        by_target[spec.target] = spec
    by_target["toxicity"] = OosSpec(
        "toxicity@oos", "toxicity",
        "dictionary definitions (slurs, insults and profanity among them), not fortunes; labels are WEAK: "
        "scores of the same bag-of-words profanity classifier (alt-profanity-check), not human annotations",
        _toxicity_parts(),
    )  # fmt: skip
    ordered = [by_target[s.name] for s in registry.list_corpora() if s.name in by_target]
    return (*ordered, _retain(ordered))


def list_oos() -> list[OosSpec]:
    """Every OOS set, in the registry's order of their targets, then retain@oos."""
    return list(_specs())


def oos_names() -> list[str]:
    return [s.name for s in _specs()]


def is_oos(name: str) -> bool:
    return name.strip().lower().endswith(SUFFIX)


def oos_name(target: str) -> str | None:
    """The OOS set that evaluates embedded corpus `target` out of source ("general" -> retain@oos),
    None for a name without one (a user corpus)."""
    try:
        key = registry.get_spec(target).name
    except UsageError:
        return None
    for spec in _specs():
        if spec.target == key:
            return spec.name
    return None


def get_oos(name: str) -> OosSpec:
    key = name.strip().lower()
    if not key.endswith(SUFFIX):
        key = f"{registry.canonical(key)}{SUFFIX}"
    elif key != RETAIN:
        key = f"{registry.canonical(key[: -len(SUFFIX)])}{SUFFIX}"
    for spec in _specs():
        if spec.name == key:
            return spec
    close = difflib.get_close_matches(key, oos_names(), n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UsageError(f"unknown out-of-source set {name!r}; {hint}they are named TARGET@oos and retain@oos")


def availability(name: str) -> tuple[bool, str]:
    """(available, detail): the sources a set reads, or the command that installs what is missing."""
    spec = get_oos(name)
    try:
        missing = [p.install for p in spec.parts if not p.present()]
    except OSError as exc:
        return False, f"cannot inspect source: {exc}"
    if missing:
        return False, "not installed: " + "; ".join(dict.fromkeys(missing))
    return True, "; ".join(dict.fromkeys(p.label() for p in spec.parts)) if spec.name != RETAIN else (
        f"mixes the {len(spec.parts)} other out-of-source sets")
