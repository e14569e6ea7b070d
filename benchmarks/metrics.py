"""Task and degeneration metrics, implemented here so every number in a report is traceable.

All text metrics work on *words*: the lower-cased, accent-folded runs of ``[a-z0-9]``
(``"Café Rouge!"`` -> ``["cafe", "rouge"]``).

- :func:`repetition_rate`: share of token n-grams that repeat an earlier n-gram (degeneration).
- Word n-gram repetition (what a reader sees) is the library's own count, :func:`refine.degeneration.repeated_ngrams`.
- ROUGE is not here: :mod:`benchmarks.rouge` takes it from the maintained ``rouge-score`` package.
- :func:`concept_coverage`: share of CommonGen concepts present as whole words (regular inflections allowed).
- :func:`reads_as_list`: whether an output is a list of words or ``key: value`` lines rather than prose.
- :func:`parse_mr`, :func:`slot_keywords`, :func:`slot_coverage`: E2E meaning representations and how many
  of their slot values an output realises.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

_WORD = re.compile(r"[a-z0-9]+")
_SLOT = re.compile(r"\s*([^,\[\]]+?)\s*\[([^\]]*)\]\s*(?:,|$)")

#: words that carry no slot information ("more than £30" is keyed by "30"; "5 out of 5" by "5")
STOPWORDS = frozenset({"a", "an", "and", "of", "the", "than", "out", "more", "less"})


def fold(text: str) -> str:
    """Lower-case ``text`` and strip accents (``"Café"`` -> ``"cafe"``)."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The words of ``text``: lower-cased, accent-folded ``[a-z0-9]+`` runs."""
    return _WORD.findall(fold(text))


def repetition_rate(tokens: Sequence[int], n: int = 3) -> float:
    """Share of the n-grams of ``tokens`` that repeat an n-gram seen earlier in the same sequence.

    0.0 means no repeats; sequences shorter than ``n`` have no n-grams and score 0.0.
    The caller passes content tokens (a final EOS removed).
    """
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


def inflections(word: str) -> set[str]:
    """Regular inflections of an English lemma: -s/-es/-ed/-d/-ing, e-drop (dance -> dancing),
    y -> i (carry -> carries) and a doubled final consonant (run -> running). Irregular forms are not made;
    a few non-words are (they never match real text).

    >>> {"runs", "running"} <= inflections("run"), {"dancing", "danced"} <= inflections("dance")
    (True, True)
    """
    w = fold(word).strip()
    forms = {w, w + "s", w + "es", w + "ed", w + "d", w + "ing"}
    vowels = "aeiou"
    if w.endswith("e"):
        forms |= {w[:-1] + "ing", w[:-1] + "ed"}
    if len(w) > 2 and w.endswith("y") and w[-2] not in vowels:
        forms |= {w[:-1] + "ies", w[:-1] + "ied"}
    if len(w) >= 3 and w[-1] not in vowels + "wxy" and w[-2] in vowels and w[-3] not in vowels:
        forms |= {w + w[-1] + "ing", w + w[-1] + "ed"}
    return forms


def concept_coverage(concepts: Sequence[str], text: str) -> float:
    """Share of ``concepts`` that occur in ``text`` as a whole word, exactly or regularly inflected.

    Stricter than :func:`refine.objectives.coverage`, which accepts any word that merely starts with the
    concept ("car" in "careful"): an independent check of what a coverage objective optimises.
    """
    if not concepts:
        return 1.0
    present = set(words(text))
    return sum(bool(inflections(c) & present) for c in concepts) / len(concepts)


def parse_mr(mr: str) -> list[tuple[str, str]]:
    """Parse an E2E meaning representation into ``(slot, value)`` pairs, in order.

    >>> parse_mr("name[The Vaults], eatType[pub], near[Café Adriatic]")
    [('name', 'The Vaults'), ('eatType', 'pub'), ('near', 'Café Adriatic')]
    """
    pairs, pos = [], 0
    mr = mr.strip()
    while pos < len(mr):
        m = _SLOT.match(mr, pos)
        if m is None:
            raise ValueError(f"cannot parse meaning representation {mr!r} at character {pos}")
        pairs.append((m.group(1), m.group(2).strip()))
        pos = m.end()
    return pairs


def slot_keywords(slot: str, value: str) -> list[str]:
    """The words an output must contain to realise ``slot[value]``.

    ``familyFriendly`` (yes/no) is realised by the word "family" (its polarity is not checked); other slots
    by the words of their value minus :data:`STOPWORDS`.
    """
    if slot == "familyFriendly":
        return ["family"]
    keys = [w for w in words(value) if w not in STOPWORDS]
    return list(dict.fromkeys(keys)) or words(value)


def slot_coverage(slots: Sequence[tuple[str, str]], text: str) -> float:
    """Share of ``slots`` whose keywords all appear as words of ``text``."""
    if not slots:
        return 1.0
    present = set(words(text))
    hits = sum(all(k in present for k in slot_keywords(s, v)) for s, v in slots)
    return hits / len(slots)


_SEGMENTS = re.compile(r"[,;\n]+")
_KEY_VALUE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])?\s*[\w ]{1,30}:\s*\S")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S")


def reads_as_list(text: str, concepts: Sequence[str] = ()) -> bool:
    """Whether ``text`` is a list rather than prose: what a reader would not accept as "a sentence".

    A list is any of:

    - two or more non-empty lines, at least half of them ``key: value`` pairs or bullet / numbered items;
    - three or more comma-, semicolon- or line-separated segments, at least two thirds of them of at most two
      words ("Dance, kid, room.");
    - with ``concepts`` given: no word besides the concepts (as matched by :func:`refine.objectives.coverage`,
      a word starting with a concept), i.e. the concepts strung together without a single other word
      ("Dog frisbee catch.").

    >>> reads_as_list("Dance, kid, room."), reads_as_list("A kid dances in the room.")
    (True, False)
    >>> reads_as_list("Name: The Eagle\\nFood: Japanese"), reads_as_list("dog frisbee catch", ["dog", "catch", "frisbee"])
    (True, True)
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) >= 2 and sum(bool(_KEY_VALUE.match(ln) or _BULLET.match(ln)) for ln in lines) * 2 >= len(lines):
        return True
    segments = [seg for seg in _SEGMENTS.split(text) if words(seg)]
    if len(segments) >= 3 and sum(len(words(seg)) <= 2 for seg in segments) * 3 >= 2 * len(segments):
        return True
    if concepts:
        stems = [fold(c).strip() for c in concepts if c.strip()]
        others = [w for w in words(text) if not any(w.startswith(c) for c in stems)]
        if not others:
            return True
    return False
