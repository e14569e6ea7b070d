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

A third count compares the text with the prompt:

- **echoed spans**: word n-grams of the text (``n`` = 8 words by default) that occur in the prompt.
  Small models copy their instructions back ("Your response should contain at least 3 sentences.
  At the end of your response, ..."), and copying is what they find most likely; an answer
  rarely needs eight of the prompt's words in a row.

Example:
    >>> count_repeats("A cat is a cat, and a pet is a pet is a pet.")
    Repeats(ngrams=3, lines=0, echoed=0)
    >>> count_repeats("Sensory: Surf\\nSensory: Ocean\\nSensory: Surfer")
    Repeats(ngrams=0, lines=2, echoed=0)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+", re.UNICODE)

#: the n-gram size used unless configured otherwise (see the module docstring for why 3)
DEFAULT_N = 3
#: the span, in words, that counts as echoing the prompt unless configured otherwise
ECHO_N = 8


@dataclass(frozen=True)
class Repeats:
    """How repetitive a text is.

    Attributes:
        ngrams: word n-grams that repeat an earlier n-gram of the text.
        lines: non-empty lines whose pattern (all words, or all but the last) repeats an earlier line's.
        echoed: word n-grams (of the echo size) that occur in the prompt.
    """

    ngrams: int
    lines: int
    echoed: int = 0

    def exceeds(self, other: Repeats) -> bool:
        """Whether any count is higher than ``other``'s (the counts are not traded against each other)."""
        return self.ngrams > other.ngrams or self.lines > other.lines or self.echoed > other.echoed


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


def ngram_set(text: str, n: int) -> frozenset[tuple[str, ...]]:
    """The distinct word n-grams of ``text`` (a prompt's, for :func:`echoed_ngrams`)."""
    w = words(text)
    return frozenset(tuple(w[i : i + n]) for i in range(len(w) - n + 1))


def echoed_ngrams(text: str, prompt_grams: frozenset[tuple[str, ...]], n: int = ECHO_N) -> int:
    """Word n-grams of ``text`` found among ``prompt_grams`` (each occurrence counts).

    >>> grams = ngram_set("Answer in three sentences and end with a question.", 4)
    >>> echoed_ngrams("Sure. Answer in three sentences and end with it.", grams, 4)
    4
    """
    if not prompt_grams:
        return 0
    w = words(text)
    return sum(tuple(w[i : i + n]) in prompt_grams for i in range(len(w) - n + 1))


def count_repeats(text: str, n: int | None = DEFAULT_N, prompt_grams: frozenset[tuple[str, ...]] = frozenset(),
                  echo_n: int = ECHO_N) -> Repeats:
    """The counts of ``text`` (see the module docstring): ``n`` None leaves the repeat counts at 0, empty
    ``prompt_grams`` (:func:`ngram_set` of the prompt, ``echo_n`` words) the echo count."""
    if n is None:
        return Repeats(0, 0, echoed_ngrams(text, prompt_grams, echo_n))
    return Repeats(repeated_ngrams(text, n), repeated_lines(text), echoed_ngrams(text, prompt_grams, echo_n))
