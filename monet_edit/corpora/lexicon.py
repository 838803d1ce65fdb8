"""Readers for the dictionaries and the lexical database Debian ships as data: dictd databases
(GCIDE, FOLDOC, the Jargon File, The Devil's Dictionary) and WordNet 3.0.

They feed the out-of-source evaluation sets (corpora.oos): definitions are a different genre from
the embedded corpora (exam questions, a manual, source code, fortunes). Deterministic and offline;
each file is parsed once per process.
"""

from __future__ import annotations

import gzip
import re
import textwrap
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DICTD_DIR = Path("/usr/share/dictd")
WORDNET_DIR = Path("/usr/share/wordnet")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


# ----------------------------------------------------------------------------- dictd databases


def dictd_path(db: str) -> Path | None:
    """The compressed text of dictd database `db` (e.g. "gcide"), or None when not installed."""
    path = DICTD_DIR / f"{db}.dict.dz"
    return path if path.is_file() and (DICTD_DIR / f"{db}.index").is_file() else None


def _b64(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


@lru_cache(maxsize=8)
def dictd_entries(db: str) -> tuple[tuple[str, str, str], ...]:
    """(key, headword, text) of every entry of dictd database `db`, in index order; entries that
    several headwords share appear once, the database's own "00-database-*" records are skipped.
    The key is the headword, with "~N" added for its N-th further entry (a noun and a verb)."""
    path = dictd_path(db)
    if path is None:
        raise FileNotFoundError(f"{DICTD_DIR}/{db}.dict.dz")
    data = gzip.open(path).read()  # dictzip is gzip-compatible
    seen: set[tuple[int, int]] = set()
    heads: dict[str, int] = {}
    out = []
    for line in (DICTD_DIR / f"{db}.index").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith(("00-", "00database")):
            continue
        key = (_b64(parts[1]), _b64(parts[2]))
        if key in seen:
            continue
        seen.add(key)
        text = data[key[0] : key[0] + key[1]].decode("utf-8", errors="replace")
        n = heads[parts[0]] = heads.get(parts[0], -1) + 1
        out.append((parts[0] + (f"~{n}" if n else ""), parts[0], text))
    return tuple(out)


def dictd_text(text: str) -> str:
    """An entry as plain text: cross-reference braces dropped, indentation removed."""
    text = text.replace("{", "").replace("}", "")
    return textwrap.dedent(text).strip()


# ----------------------------------------------------------------------------- GCIDE

_ACCENT = {'"': "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "=": "\u0304", "~": "\u0303",
           ",": "\u0327", ".": "\u0307"}  # fmt: skip
_LIGATURE = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "asl": "", "root": "√", "deg": "°", "frac12": "½"}
_SOURCE_TAG = re.compile(r"^\s*\[[^\]\n]*\]\s*$", re.M)  # "[1913 Webster]", "[WordNet 1.5]", "[PJC]"
_PRONUNCIATION = re.compile(r"\\[^\\\n]{1,60}\\|\s\((?=[^)\n]*[\"`*])[^)\n]{1,40}\)")
_LABEL = re.compile(r"\(([A-Z][A-Za-z]*\.?(?: [A-Z][A-Za-z]*\.?){0,2})\)")


def gcide_clean(text: str) -> str:
    """GCIDE's ASCII markup as Unicode text: ["o] -> ö, [u^] -> ŭ, [ae] -> æ; source tags and
    pronunciations removed."""
    text = re.sub(r"\[([\"'`^=~,.])([A-Za-z])\]", lambda m: m.group(2) + _ACCENT[m.group(1)], text)
    text = re.sub(r"\[([A-Za-z])\^\]", lambda m: m.group(1) + "\u0306", text)  # breve
    text = re.sub(r"\[([A-Za-z]+[0-9]*)\^?\]", lambda m: _LIGATURE.get(m.group(1), m.group(0)), text)
    text = _SOURCE_TAG.sub("", text)
    text = _PRONUNCIATION.sub("", text)
    text = re.sub(r"[ \t]+,", ",", text)
    text = "\n".join(line.strip() for line in text.splitlines())
    text = re.sub(r"\n{3,}", "\n\n", text)
    return unicodedata.normalize("NFC", dictd_text(text))


@lru_cache(maxsize=1)
def _gcide_labelled() -> dict[str, tuple[tuple[str, str, int, str], ...]]:
    """Usage label -> (entry key, headword, block number, block) of every GCIDE sense whose text opens with
    it (within its first 160 characters: a label there marks the sense, later it is cited)."""
    out: dict[str, list[tuple[str, str, int, str]]] = {}
    for key, head, text in dictd_entries("gcide"):
        shown = re.match(r"\s*([^\\,\n]+?)\s*[\\,\n]", text)  # the entry's own headword, not the index's
        head = shown.group(1) if shown else head
        for i, block in enumerate(re.split(r"\n\s*\n", text)):
            for m in _LABEL.finditer(block, 0, 160):
                out.setdefault(m.group(1), []).append((key, head, i, block))
    return {k: tuple(v) for k, v in out.items()}


def gcide_sense_ids(labels: Iterable[str]) -> set[str]:
    """The ids gcide_senses(labels) may yield (without cleaning any text)."""
    index = _gcide_labelled()
    return {f"{key}#{i}" for label in labels for key, _, i, _ in index.get(label, ())}


def gcide_senses(labels: Iterable[str], exclude: frozenset[str] = frozenset()) -> Iterator[dict]:
    """GCIDE senses marked with one of the usage labels (e.g. "Law", "Zool."), as documents
    "Headword: sense" (the label is the dictionary's own, not a guess of ours); ids in `exclude`
    are skipped."""
    index = _gcide_labelled()
    seen: set[str] = set(exclude)
    for label in labels:
        for key, head, i, block in index.get(label, ()):
            doc_id = f"{key}#{i}"
            if doc_id in seen:
                continue
            seen.add(doc_id)
            sense = gcide_clean(block)
            if len(sense) >= 40:
                yield {"id": doc_id, "text": f"{head}: {sense}" if i else sense}


# ----------------------------------------------------------------------------- WordNet

LEXFILES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
    "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social",
    "verb.stative", "verb.weather", "adj.ppl",
)  # fmt: skip  (WordNet's lexicographer file numbers 0..44)
POS_FILES = ("noun", "verb", "adj", "adv")


@dataclass(frozen=True)
class Synset:
    key: str  # "<pos><offset>", e.g. "n06539770"
    lexfile: str
    words: tuple[str, ...]
    pointers: tuple[tuple[str, str], ...]  # (symbol, target key)
    gloss: str

    @property
    def text(self) -> str:
        """"word, other word: gloss" with WordNet's underscores as spaces."""
        words = ", ".join(dict.fromkeys(w.replace("_", " ") for w in self.words))
        return f"{words}: {self.gloss}"


def wordnet_available() -> bool:
    return all((WORDNET_DIR / f"data.{p}").is_file() for p in POS_FILES)


def _pos_key(pos: str) -> str:
    return "a" if pos == "s" else pos


@lru_cache(maxsize=1)
def wordnet() -> dict[str, Synset]:
    """Every synset of the WordNet data files, by key."""
    out: dict[str, Synset] = {}
    for name in POS_FILES:
        path = WORDNET_DIR / f"data.{name}"
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):  # the licence header
                    continue
                head, _, gloss = line.partition(" | ")
                f = head.split()
                n_words = int(f[3], 16)
                words = tuple(re.sub(r"\(\w+\)$", "", f[4 + 2 * i]) for i in range(n_words))
                at = 4 + 2 * n_words
                pointers = tuple(
                    (f[at + 1 + 4 * k], _pos_key(f[at + 3 + 4 * k]) + f[at + 2 + 4 * k])
                    for k in range(int(f[at]))
                )
                key = _pos_key(f[2]) + f[0]
                out[key] = Synset(key, LEXFILES[int(f[1])], words, pointers, gloss.strip())
    return out


@dataclass(frozen=True)
class WordnetSelection:
    """Which synsets a set takes: members of WordNet's topic domains (";c" pointers to a domain
    synset whose first word is listed), whole lexicographer files, instances (proper names) of
    lexicographer files, and hyponyms of root synsets given as "word/lexfile"."""

    topics: tuple[str, ...] = ()
    lexfiles: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    hyponyms_of: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.topics:
            parts.append("topic domains " + ", ".join(self.topics))
        if self.lexfiles:
            parts.append("files " + ", ".join(self.lexfiles))
        if self.instances:
            parts.append("named instances in " + ", ".join(self.instances))
        if self.hyponyms_of:
            parts.append("kinds of " + ", ".join(r.split("/")[0] for r in self.hyponyms_of))
        return "; ".join(parts)


def wordnet_glosses(sel: WordnetSelection) -> Iterator[dict]:
    """Documents "words: gloss" of the synsets `sel` takes, each synset once, in WordNet order."""
    syn = wordnet()
    topics = set(sel.topics)
    roots = set()
    for root in sel.hyponyms_of:
        word, lexfile = root.split("/")
        roots |= {k for k, s in syn.items() if s.lexfile == lexfile and s.words and s.words[0] == word}
    below: set[str] = set()
    todo = list(roots)
    while todo:
        key = todo.pop()
        if key in below:
            continue
        below.add(key)
        todo.extend(t for sym, t in syn[key].pointers if sym in ("~", "~i") and t in syn)
    for key, s in syn.items():
        domains = {syn[t].words[0] for sym, t in s.pointers if sym == ";c" and t in syn}
        is_instance = any(sym == "@i" for sym, _ in s.pointers)
        if (
            domains & topics
            or s.lexfile in sel.lexfiles
            or (is_instance and s.lexfile in sel.instances)
            or key in below
        ):
            yield {"id": key, "text": s.text}
