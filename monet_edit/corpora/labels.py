"""Weak toxicity labels from an offline scorer (PyPI alt-profanity-check).

The scorer is a linear model on a bag of words trained to detect profanity and insults. It is
not a human toxicity annotation: labels derived from it are WEAK and every report that uses them
must say so. A token's label is the score of the word that contains it (map tokens to words by
character offsets with `word_spans`).
"""

from __future__ import annotations

import re
import warnings

from ..errors import MonetEditError

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
WEAK_NOTE = "weak labels: alt-profanity-check (bag-of-words profanity classifier), not human toxicity labels"


def _predict(texts: list[str]) -> list[float]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn version-mismatch warnings on unpickling
            from profanity_check import predict_prob
    except ImportError:
        raise MonetEditError(
            "the toxicity scorer is not installed: pip install alt-profanity-check==1.9.1"
        ) from None
    if not texts:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probs = predict_prob(list(texts))
    return [float(p) for p in probs]


def score_texts(texts: list[str]) -> list[float]:
    """Probability of profanity/insult per text, in [0, 1]."""
    return _predict([str(t) for t in texts])


_WORD_SCORES: dict[str, float] = {}  # a word's score never changes: score each word once per process


def prime(texts: list[str]) -> None:
    """Score every not yet scored word of `texts` in one call (the scorer's per-call cost dominates
    when documents are scored one by one)."""
    words = sorted({m.group().lower() for t in texts for m in WORD.finditer(t)} - _WORD_SCORES.keys())
    _WORD_SCORES.update(zip(words, _predict(words), strict=True))


def word_spans(text: str) -> list[tuple[int, int, float]]:
    """(start, end, score) for each word of `text` (character offsets, end exclusive)."""
    prime([text])
    return [(m.start(), m.end(), _WORD_SCORES[m.group().lower()]) for m in WORD.finditer(text)]


def token_labels(offsets: list[tuple[int, int]], text: str) -> list[float]:
    """Label per token given its character offsets: the score of the word it overlaps (0 if none)."""
    spans = word_spans(text)
    out = []
    j = 0
    for start, end in offsets:
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        score = 0.0
        k = j
        while k < len(spans) and spans[k][0] < end:
            score = max(score, spans[k][2])
            k += 1
        out.append(score)
    return out
