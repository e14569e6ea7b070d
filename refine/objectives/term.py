"""What an objective is made of: a :class:`Term` scores a batch of candidates (:class:`CandidateView` s) and
registers by name in :data:`TERMS`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..registry import Registry


@dataclass(frozen=True)
class CandidateView:
    """What a term sees of one candidate.

    Attributes:
        tokens: output token ids (a final EOS included when ``ended``).
        logprobs: ``(T,)`` per-token log-probabilities under the model.
        text: decoded text without special tokens (present when some term has ``needs_text``).
        ended: whether the output ends with an end-of-sequence token.
    """

    tokens: tuple[int, ...]
    logprobs: np.ndarray
    text: str | None = None
    ended: bool = False

    @property
    def content_length(self) -> int:
        """Number of tokens, not counting a final EOS."""
        return len(self.tokens) - (1 if self.ended else 0)


class Term(ABC):
    """One component of an objective. Subclasses register with ``@TERMS.register(name)``."""

    name: str = "term"
    #: whether :meth:`values` reads ``CandidateView.text``
    needs_text: bool = False

    def bind(self, tokenizer: Any) -> None:
        """Called once before a search with the tokenizer view (to encode references, say)."""

    @abstractmethod
    def values(self, views: Sequence[CandidateView]) -> np.ndarray:
        """Return ``(B,)`` float64 values, higher is better."""

    def params(self) -> dict[str, Any]:
        return {}


TERMS: Registry[Term] = Registry("objective term", Term)
