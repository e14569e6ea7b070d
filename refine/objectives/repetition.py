"""The ``repetition`` term: minus the share of an output's n-grams that repeat an earlier one."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .term import TERMS, CandidateView, Term  # noqa: F401 - CandidateView: the doctest


@TERMS.register("repetition")
class RepetitionPenalty(Term):
    """Minus the share of n-grams that repeat an earlier n-gram of the same output (0 = no repeats, -1 = all).

    >>> RepetitionPenalty(n=2).values([CandidateView((1, 2, 1, 2, 1, 2), np.zeros(6))]).tolist()
    [-0.6]
    """

    def __init__(self, n: int = 3) -> None:
        if isinstance(n, bool) or not (isinstance(n, int) and n >= 1):
            raise ConfigError(f"`repetition.n` has to be a strictly positive integer, but is {n!r}")
        self.n = n

    def values(self, views):
        out = []
        for v in views:
            toks = v.tokens[: v.content_length]
            grams = [tuple(toks[i : i + self.n]) for i in range(len(toks) - self.n + 1)]
            if not grams:
                out.append(0.0)
                continue
            repeated = len(grams) - len(set(grams))
            out.append(-repeated / len(grams))
        return np.array(out)

    def params(self):
        return {"n": self.n}
