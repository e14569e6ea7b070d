"""The log-probability terms and their length handling: ``sum`` (prefers short outputs), ``mean`` and ``gnmt``
(normalised by length), and ``length`` (a per-token bonus beside ``sum``)."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .term import TERMS, Term


@TERMS.register("sum")
class SumLogProb(Term):
    """Sum of token log-probabilities, log P(y | x). Prefers short outputs."""

    def values(self, views):
        return np.array([float(np.sum(v.logprobs)) for v in views])


@TERMS.register("mean")
class MeanLogProb(Term):
    """Mean token log-probability, log P(y | x) / |y|. Invites padding with predictable tokens."""

    def values(self, views):
        return np.array([float(np.sum(v.logprobs)) / max(len(v.logprobs), 1) for v in views])


@TERMS.register("gnmt")
class GNMTLogProb(Term):
    """log P(y | x) / lp(|y|) with the GNMT length penalty lp(n) = ((5 + n) / 6) ** alpha.

    ``alpha=0`` is the plain sum; ``alpha=1`` is close to the mean for long outputs.
    """

    def __init__(self, alpha: float = 0.6) -> None:
        if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 2.0):
            raise ConfigError(f"`gnmt.alpha` has to be a number in [0, 2], but is {alpha!r}")
        self.alpha = float(alpha)

    def values(self, views):
        return np.array(
            [float(np.sum(v.logprobs)) / ((5.0 + len(v.logprobs)) / 6.0) ** self.alpha for v in views]
        )

    def params(self):
        return {"alpha": self.alpha}


@TERMS.register("length")
class LengthBonus(Term):
    """Number of content tokens (final EOS excluded). With a positive weight beside ``sum`` it offsets
    the sum's preference for short outputs (a "word reward")."""

    def values(self, views):
        return np.array([float(v.content_length) for v in views])
