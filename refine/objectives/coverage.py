"""Required words in the decoded text: :func:`coverage` (the matcher, also used to measure outputs) and the
``coverage`` term built on it."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from .term import TERMS, Term


_WORD = re.compile(r"\w+", re.UNICODE)
_SUFFIXES = ("", "s", "es", "d", "ed", "ing", "er", "ers", "est")


def _forms(word: str) -> set[str]:
    """Regular inflections of ``word``: dog -> dogs, dance -> dancing, run -> running, carry -> carried."""
    forms = {word + s for s in _SUFFIXES}
    if len(word) > 2 and word.endswith("e"):
        forms |= {word[:-1] + s for s in ("ing", "ed", "er", "ers")}
    if len(word) > 2 and word.endswith("y"):
        forms |= {word[:-1] + s for s in ("ies", "ied", "ier", "iest")}
    if len(word) > 2 and word[-1] not in "aeiouwy" and word[-2] in "aeiou":
        forms |= {word + word[-1] + s for s in ("ing", "ed", "er", "ers")}
    return forms


def _covers(word: str, text_words: set[str]) -> bool:
    """Whether ``word`` (a lemma such as "dance") appears in ``text_words`` as itself or a regular inflection."""
    return bool(_forms(word) & text_words)


def coverage(words: Sequence[str], text: str) -> float:
    """Share of ``words`` that appear in ``text`` as whole words (case-insensitive; regular inflections
    count, irregular ones such as ran/stood do not).

    >>> coverage(["dog", "run", "dance", "car"], "The dogs were running carefully.")
    0.5
    """
    text_words = set(_WORD.findall(text.lower()))
    if not words:
        return 1.0
    hit = sum(_covers(w.lower(), text_words) for w in words)
    return round(hit / len(words), 4)


@TERMS.register("coverage")
class Coverage(Term):
    """Share (0..1) of required words present in the decoded text, e.g. CommonGen concept sets."""

    needs_text = True

    def __init__(self, words: Sequence[str] = ()) -> None:
        if isinstance(words, str) or not all(isinstance(w, str) and w.strip() for w in words) or not words:
            raise ConfigError(f"`coverage.words` has to be a non-empty list of non-empty strings, but is {words!r}")
        self.words = [w.strip() for w in words]

    def values(self, views):
        return np.array([coverage(self.words, v.text or "") for v in views])

    def params(self):
        return {"words": list(self.words)}
