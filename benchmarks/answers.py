"""Exact-match answers: reading a number out of a model's output, and the majority vote over samples.

Two extraction rules, one per kind of task:

- :func:`first_number` (short arithmetic answers): the first integer of the output, read *after the first ``=``*
  when the output has one. Small instruction models restate the question ("47 + 38 = 85"), and the first
  integer of that is an operand, not the answer; "85", "The answer is 85." and "47 + 38 = 85" all give 85.
- :func:`final_number` (worked solutions, GSM8K): the last number of the output, thousands separators dropped,
  so a solution that ends "... she makes $18 a day." gives 18.

Numbers are compared exactly as :class:`fractions.Fraction` (``"18.0"`` equals ``"18"``); no number gives ``None``,
which is never right.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Sequence

#: an integer, optionally signed, with optional thousands separators ("1,234")
_INTEGER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)")
#: a decimal number, optionally signed, with optional thousands separators
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?")


def _value(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def first_number(text: str) -> Fraction | None:
    """The first integer of ``text`` after its first ``=`` (the whole text when it has none); ``None`` if absent.

    >>> first_number("47 + 38 = 85."), first_number("The answer is 85."), first_number("none")
    (Fraction(85, 1), Fraction(85, 1), None)
    """
    tail = text.split("=", 1)[1] if "=" in text else text
    m = _INTEGER.search(tail)
    return _value(m.group()) if m else None


def final_number(text: str) -> Fraction | None:
    """The last number of ``text`` (decimals allowed, a trailing full stop is not a decimal point); ``None`` if
    absent.

    >>> final_number("16 - 3 - 4 = 9 eggs, 9 * 2 = $18."), final_number("It costs 1,250.50 dollars")
    (Fraction(18, 1), Fraction(2501, 2))
    """
    found = _NUMBER.findall(text)
    return _value(found[-1]) if found else None


def gsm8k_reference(answer: str) -> Fraction:
    """The reference number of a GSM8K solution: what follows its ``####`` marker."""
    if "####" not in answer:
        raise ValueError(f"a GSM8K answer ends with '#### <number>', got {answer[-60:]!r}")
    return _value(answer.rsplit("####", 1)[1].strip())


def majority(answers: Sequence[Fraction | None], logps: Sequence[float]) -> tuple[Fraction | None, int, dict]:
    """The majority vote over samples' answers.

    Samples without an answer do not vote. The answer given by most samples wins; a tie goes to the answer whose
    samples have the larger summed log-probability (``logps``: each sample's sum log P), and an exact tie of that
    to the answer seen first. Returns ``(answer, index of the most likely sample giving it, votes per answer)``;
    with no answer at all, ``(None, index of the most likely sample, {})``.

    >>> from fractions import Fraction as F
    >>> majority([F(3), F(5), F(5), None], [-1.0, -4.0, -4.5, -0.1])[:2]
    (Fraction(5, 1), 1)
    >>> majority([F(3), F(5)], [-1.0, -2.0])[:2]   # one vote each: the likelier answer wins
    (Fraction(3, 1), 0)
    """
    if len(answers) != len(logps) or not answers:
        raise ValueError(f"majority needs one log-probability per answer, got {len(answers)} and {len(logps)}")
    votes: dict[Fraction, int] = {}
    mass: dict[Fraction, float] = {}
    for a, lp in zip(answers, logps):
        if a is not None:
            votes[a] = votes.get(a, 0) + 1
            mass[a] = mass.get(a, 0.0) + float(lp)
    if not votes:
        return None, max(range(len(logps)), key=lambda i: (logps[i], -i)), {}
    order = list(votes)  # first-seen order breaks exact ties
    winner = max(order, key=lambda a: (votes[a], mass[a], -order.index(a)))
    index = max((i for i, a in enumerate(answers) if a == winner), key=lambda i: (logps[i], -i))
    return winner, index, votes
