"""Answers about an atlas: one expert, a search, a corpus's most specific experts.

These are the JSON documents the server returns; every bad request is a QueryError carrying
the HTTP status to answer with (400 malformed, 404 no such thing), never an exception that would
become a 500. Expert ids: group g, sub-experts i (g1 side) and j (g2 side), flat id i*E + j.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import numpy as np

from ...errors import UsageError
from .. import experts as experts_mod
from .store import Atlas

MAX_LIMIT = 1000
MAX_QUERY = 200
MIN_ACTIVE = 3  # a corpus's specific experts must be active on at least this many of its tokens
EXPERT_ID = re.compile(r"^\s*(\d+)\s*[/:]\s*(\d+)\s*[,/]\s*(\d+)\s*$")  # G/I/J or G:I,J
FLAT_ID = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")  # G:ID with ID = i*E + j
TOKEN_ID = re.compile(r"^\s*#(\d+)\s*$")


class QueryError(UsageError):
    """A request the atlas cannot answer, with the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def integer(value, name: str, *, low: int = 0, high: int | None = None, default: int | None = None) -> int:
    """A request parameter as an int in [low, high] (QueryError 400 otherwise)."""
    if value is None or value == "":
        if default is None:
            raise QueryError(f"{name} is required")
        return default
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"-?\d{1,18}", text):
        raise QueryError(f"{name} must be an integer, got {str(value)[:40]!r}")
    number = int(text)
    if number < low or (high is not None and number > high):
        raise QueryError(f"{name} must be in {low}..{high}, got {number}" if high is not None
                         else f"{name} must be at least {low}, got {number}")
    return number


@dataclass(eq=False)  # hashed by identity: its answers are cached per reader
class Reader:
    """An atlas with its tokenizer: decodes contexts and matches words."""

    atlas: Atlas
    tokenizer: object

    @property
    def E(self) -> int:
        return self.atlas.experts

    # ------------------------------------------------------------------ experts

    def check(self, group, i, j) -> tuple[int, int, int]:
        """(group, i, j) as ints; 400 if not integers, 404 if no such expert."""
        g, i, j = (integer(v, n) for v, n in ((group, "group"), (i, "i"), (j, "j")))
        G, E = self.atlas.groups, self.E
        if g >= G:
            raise QueryError(f"group {g} out of range: the atlas has {G} routing groups (0..{G - 1})", 404)
        if i >= E or j >= E:
            raise QueryError(f"expert ({i},{j}) out of range: {E} sub-experts per side (0..{E - 1})", 404)
        return g, i, j

    def token(self, position: int) -> tuple[int, str]:
        token_id = int(self.atlas.ids.reshape(-1)[position])
        return token_id, experts_mod.token_text(self.tokenizer, token_id)

    def brief(self, g: int, e: int) -> dict:
        """An expert in a list: id, density, mean weight and its best occurrence's token."""
        a = self.atlas
        active = int(a.active[g, e].sum())
        position = int(a.top_position[g, e, 0])
        return {"group": g, "i": e // self.E, "j": e % self.E, "id": e, "density": active / a.ids.size,
                "mean_weight": float(a.usage[g, e].astype(np.float64).sum()) / a.ids.size,
                "top_token": self.token(position)[1] if position >= 0 else None,
                "top_weight": float(a.top_weight[g, e, 0])}

    def expert(self, group, i, j, k=None) -> dict:
        """Everything about one expert: top-k occurrences with context, density, per-corpus usage,
        and the experts sharing a sub-expert with it."""
        g, i, j = self.check(group, i, j)
        a, e = self.atlas, i * self.E + j
        k = integer(k, "k", low=1, high=a.top, default=a.top)
        hits, corpora = [], []
        T = a.seq_len
        for rank in range(k):
            position = int(a.top_position[g, e, rank])
            if position < 0:
                break
            row, pos = divmod(position, T)
            hits.append(experts_mod.hit(self.tokenizer, a.ids[row].tolist(), row, pos,
                                        float(a.top_weight[g, e, rank])))
            corpora.append(a.corpora[int(a.row_corpus[row])]["name"])
        found = experts_mod.ExpertTokens(g, i, j, int(a.ids.size), hits).to_dict()
        for entry, corpus in zip(found["hits"], corpora, strict=True):
            entry["corpus"] = corpus
        usage = []
        for c, corpus in enumerate(a.corpora):
            active, total = int(a.active[g, e, c]), corpus["tokens"]
            usage.append({"corpus": corpus["name"], "kind": corpus["kind"], "tokens": total, "active": active,
                          "density": active / total, "mean_weight": float(a.usage[g, e, c]) / total})
        found.update(self.brief(g, e), usage=usage, top=a.top, k=k, siblings=self.siblings(g, i, j))
        return found

    def siblings(self, g: int, i: int, j: int, limit: int = 8) -> dict:
        """The busiest experts (i, *) and (*, j) of the group besides (i, j), by total weight."""
        E = self.E
        usage = self.atlas.usage[g].astype(np.float64).sum(-1).reshape(E, E)
        out = {}
        for name, line, other in (("same_i", usage[i], lambda x: i * E + x), ("same_j", usage[:, j],
                                                                             lambda x: x * E + j)):
            order = [int(x) for x in np.argsort(-line, kind="stable") if line[x] > 0 and other(int(x)) != i * E + j]
            out[name] = {"active": len(order), "experts": [self.brief(g, other(x)) for x in order[:limit]]}
        return out

    # ------------------------------------------------------------------ corpora

    def corpus_index(self, name: str) -> int:
        from ...corpora.registry import canonical

        names = [c["name"] for c in self.atlas.corpora]
        for key in (name, canonical(name)):
            if key in names:
                return names.index(key)
        raise QueryError(f"no corpus {name!r} in this atlas (it has {', '.join(names)})", 404)

    def corpus(self, name: str, group=None, limit=None, min_active=None) -> dict:
        """The experts most specific to a corpus: log10 of its mean weight over the largest mean
        weight of any other corpus (null where no other corpus uses the expert), among experts
        active on at least `min_active` of its tokens; ties by mean weight."""
        c = self.corpus_index(name)
        limit = integer(limit, "limit", low=1, high=MAX_LIMIT, default=50)
        min_active = integer(min_active, "min_active", low=1, default=MIN_ACTIVE)
        groups = range(self.atlas.groups) if group in (None, "") else [self.check(group, 0, 0)[0]]
        rows = []
        for g in groups:
            score, mean = self._specificity(c, g)
            eligible = np.flatnonzero(self.atlas.active[g, :, c] >= min_active)
            rows.extend((float(score[e]), float(mean[e]), g, int(e)) for e in eligible)
        rows.sort(key=lambda r: (-r[0], -r[1], r[2], r[3]))
        results = []
        for score, mean, g, e in rows[:limit]:
            entry = self.brief(g, e)
            entry.update(specificity=None if math.isinf(score) else score, only_here=math.isinf(score),
                         corpus_mean_weight=mean,
                         corpus_density=int(self.atlas.active[g, e, c]) / self.atlas.corpora[c]["tokens"])
            results.append(entry)
        references = len(self.atlas.corpora) - 1
        return {"corpus": self.atlas.corpora[c]["name"], "references": references, "min_active": min_active,
                "score": "log10(mean weight on the corpus / max mean weight on another corpus)" if references
                else "mean weight on the corpus (no other corpus to compare with)", "results": results}

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one reader per server; the cache lives as long)
    def _specificity(self, c: int, g: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.atlas.corpus_tokens()
        mean = self.atlas.usage[g].astype(np.float64) / tokens  # [E*E, C]
        target = mean[:, c]
        if mean.shape[1] == 1:
            return target, target
        others = np.delete(mean, c, axis=1).max(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(others > 0, np.log10(target / np.where(others > 0, others, 1.0)), math.inf)
        return np.where(target > 0, score, -math.inf), target

    # ------------------------------------------------------------------ search

    def search(self, q, limit=None, group=None) -> dict:
        """Experts for a query: an expert id (G/I/J, G:I,J or G:ID), `corpus:NAME`, a token id (#N)
        or a word or token (the experts whose top occurrences are it most often)."""
        if q is None or not str(q).strip():
            raise QueryError("q is empty: give a word, a token (#id), an expert (G/I/J) or corpus:NAME")
        q = str(q)
        if len(q) > MAX_QUERY:
            raise QueryError(f"q is {len(q)} characters long; at most {MAX_QUERY}")
        limit = integer(limit, "limit", low=1, high=MAX_LIMIT, default=50)
        if (m := EXPERT_ID.match(q)) or (m := FLAT_ID.match(q)):
            numbers = [int(x) for x in m.groups()]
            g, i, j = numbers if len(numbers) == 3 else (numbers[0], *divmod(numbers[1], self.E))
            if len(numbers) == 2 and numbers[1] >= self.E * self.E:
                raise QueryError(f"expert id {numbers[1]} out of range (0..{self.E * self.E - 1})", 404)
            g, i, j = self.check(g, i, j)
            return {"query": q, "kind": "expert", "results": [self.brief(g, i * self.E + j)]}
        if q.lower().startswith("corpus:"):
            found = self.corpus(q.split(":", 1)[1].strip(), group, limit)
            return {"query": q, "kind": "corpus", **found}
        group = None if group in (None, "") else self.check(group, 0, 0)[0]
        if m := TOKEN_ID.match(q):
            token_id = int(m.group(1))
            if token_id >= self.atlas.offsets.shape[0] - 1:
                raise QueryError(f"token id {token_id} out of range (vocabulary of {self.atlas.offsets.shape[0] - 1})", 404)
            lo, hi = int(self.atlas.offsets[token_id]), int(self.atlas.offsets[token_id + 1])
            entries = np.asarray(self.atlas.entries[lo:hi], dtype=np.int64)
            forms = [experts_mod.token_text(self.tokenizer, token_id)]
            kind = "token"
        else:
            entries, forms = self._word_entries(q.strip())
            kind = "word"
        corpus = None
        try:
            corpus = self.atlas.corpora[self.corpus_index(q.strip())]["name"]
        except QueryError:
            pass
        return {"query": q, "kind": kind, "forms": forms, "corpus": corpus,
                "results": self._rank(entries, limit, group)}

    def _rank(self, entries: np.ndarray, limit: int, group: int | None) -> list[dict]:
        """Experts among the top-k slots `entries`, by how many they hold, then by weight."""
        a, K = self.atlas, self.atlas.top
        expert = entries // K  # g * E*E + e
        if group is not None:
            keep = expert // (self.E * self.E) == group
            entries, expert = entries[keep], expert[keep]
        if not entries.size:
            return []
        weight = a.top_weight.reshape(-1)[entries]
        unique, inverse, counts = np.unique(expert, return_inverse=True, return_counts=True)
        best = np.zeros(unique.size)
        np.maximum.at(best, inverse, weight)
        order = np.lexsort((unique, -best, -counts))[:limit]
        out = []
        for x in order:
            g, e = divmod(int(unique[x]), self.E * self.E)
            entry = self.brief(g, e)
            entry.update(hits=int(counts[x]), max_weight=float(best[x]))
            out.append(entry)
        return out

    def _word_entries(self, word: str) -> tuple[np.ndarray, list[str]]:
        """Top-k slots on whole-word occurrences of `word` (any of its casings, with or without a
        leading space), and the token forms that matched."""
        a, tok = self.atlas, self.tokenizer
        ids = a.ids.reshape(-1)
        T = a.seq_len
        starts, ends, wordy = self._word_flags()
        forms = {}
        for form in dict.fromkeys((word, word.lower(), word.capitalize(), word.upper())):
            for prefix in ("", " "):
                seq = tuple(tok.encode(prefix + form, add_bos=False))
                if seq:
                    forms[seq] = prefix + form
        found, matched = [], []
        for seq in forms:
            L, hit_any = len(seq), False
            if max(seq) >= a.offsets.shape[0] - 1:
                continue
            for m, token_id in enumerate(seq):
                if not wordy[token_id]:  # the leading space of " word" is not the word
                    continue
                lo, hi = int(a.offsets[token_id]), int(a.offsets[token_id + 1])
                entries = np.asarray(a.entries[lo:hi], dtype=np.int64)
                start = a.top_position.reshape(-1)[entries].astype(np.int64) - m
                ok = (start >= 0) & (start // T == (start + L - 1) // T) & (start + L - 1 < ids.size)
                for o, want in enumerate(seq):
                    ok &= ids[np.clip(start + o, 0, ids.size - 1)] == want
                after = start + L
                glued = (after % T != 0) & (after < ids.size)
                ok &= ~(glued & ~starts[ids[np.clip(after, 0, ids.size - 1)]])
                if not starts[seq[0]]:
                    before = start - 1
                    inside = (start % T != 0) & (before >= 0)
                    ok &= ~(inside & ends[ids[np.clip(before, 0, ids.size - 1)]])
                found.append(entries[ok])
                hit_any |= bool(ok.any())
            if hit_any:
                matched.append(forms[seq])
        entries = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
        return entries, matched

    @functools.lru_cache(maxsize=1)  # noqa: B019
    def _word_flags(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per token id: does it start a new word (a space or punctuation first, or a SentencePiece
        word marker), does it end with a letter or digit, and does it hold one at all."""
        size = self.atlas.offsets.shape[0] - 1
        starts, ends, wordy = np.ones(size, dtype=bool), np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
        for v in range(size):
            text = self.tokenizer.decode([v])
            if not text:
                continue
            starts[v] = not text[0].isalnum() or self.tokenizer.decode([v, v]) != text + text
            ends[v] = text[-1].isalnum()
            wordy[v] = any(ch.isalnum() for ch in text)
        return starts, ends, wordy

    # ------------------------------------------------------------------ the atlas

    def summary(self) -> dict:
        meta = self.atlas.meta
        return {"model": meta["model"], "corpora": meta["corpora"], "parameters": meta["parameters"],
                "tokens": meta["tokens"], "groups": self.atlas.groups, "experts_per_group": self.E * self.E,
                "top": self.atlas.top, "provenance": meta["provenance"]}
