"""Degeneration: how much a text repeats itself, measured on the words a reader sees.

Small models find their own loops fluent: ``"a pet is a pet is a pet ..."`` scores better per
token than the sentence it replaced, so no log-probability objective rules it out on its own.
The search therefore refuses, whatever its score, an edit that makes the output repeat itself
more than it already does (:meth:`refine.search.Search.admissible`; ``RefineConfig.repeat_guard``).

Two counts, both on the decoded text (lower-cased ``\\w+`` words, so tokenization, spacing and
punctuation do not matter):

- **repeated n-grams**: word n-grams that occur earlier in the text (``n`` words, default 3).
  Bigrams repeat in ordinary prose ("of the", "in a"); trigrams rarely do in a short answer, and
  every loop of two or more words repeats a trigram after two turns (``"a pet is a pet is"``).
- **repeated lines**: non-empty lines that repeat an earlier line's words, either all of them or
  all but the last one. ``"Sensory: Surf"`` / ``"Sensory: Ocean"`` share the pattern ``sensory _``;
  numbered items (``"1. Keep ..."``, ``"2. Keep ..."``) and lines that differ before their last
  word do not match. This catches a list that fills the same label with different single words,
  which an n-gram count of 3 sees only once.

Example:
    >>> count_repeats("A cat is a cat, and a pet is a pet is a pet.")
    Repeats(ngrams=3, lines=0)
    >>> count_repeats("Sensory: Surf\\nSensory: Ocean\\nSensory: Surfer")
    Repeats(ngrams=0, lines=2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+", re.UNICODE)

#: the n-gram size used unless configured otherwise (see the module docstring for why 3)
DEFAULT_N = 3


@dataclass(frozen=True)
class Repeats:
    """How repetitive a text is.

    Attributes:
        ngrams: word n-grams that repeat an earlier n-gram of the text.
        lines: non-empty lines whose pattern (all words, or all but the last) repeats an earlier line's.
    """

    ngrams: int
    lines: int

    def exceeds(self, other: Repeats) -> bool:
        """Whether either count is higher than ``other``'s (the two are not traded against each other)."""
        return self.ngrams > other.ngrams or self.lines > other.lines


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``.

    >>> words("Sensory: Surf-board, 2 waves!")
    ['sensory', 'surf', 'board', '2', 'waves']
    """
    return _WORD.findall(text.lower())


def repeated_ngrams(text: str, n: int = DEFAULT_N) -> int:
    """Word n-grams of ``text`` that occur earlier in it (an n-gram seen k times counts k - 1).

    >>> repeated_ngrams("a building, a building, a building")
    2
    """
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(grams) - len(set(grams))


def repeated_lines(text: str) -> int:
    """Non-empty lines whose words, all of them or all but the last, match an earlier line's.

    >>> repeated_lines("Colors:\\nRed\\nBlue\\nRed")
    1
    >>> repeated_lines("1. Keep a schedule.\\n2. Keep the room dark.")
    0
    """
    seen: set[tuple[str, ...]] = set()
    count = 0
    for line in text.splitlines():
        w = tuple(words(line))
        if not w:
            continue
        patterns = {w} if len(w) == 1 else {w, w[:-1] + ("",)}
        if patterns & seen:
            count += 1
        seen |= patterns
    return count


def count_repeats(text: str, n: int = DEFAULT_N) -> Repeats:
    """Both counts of ``text`` (see the module docstring)."""
    return Repeats(repeated_ngrams(text, n), repeated_lines(text))
