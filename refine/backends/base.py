"""The backend interface: how the engine gets log-probabilities from a model.

A :class:`Backend` wraps one model and its tokenizer. For each refinement the engine
opens a :class:`Session` on a fixed prompt; the session scores candidate outputs and
re-decodes suffixes, in batches, and counts every token position it runs through
the model (``forward_tokens``), padding and rejected candidates included.

Both calls take ``start``: all sequences of the call share their first ``start``
output tokens, and the session returns scores for positions ``start`` onwards
only (the engine already has the shared prefix's scores). A backend may reuse a
cache of ``prompt + shared prefix``; it must give the same numbers as a plain
full forward pass (the tests check this to 1e-4).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

from ..types import Scores


@dataclass(frozen=True)
class TokenizerView:
    """The tokenizer as plain data and two functions, so the core never imports a tokenizer library.

    Attributes:
        vocab_size: rows of the model's output layer (ids must be < this).
        eos_ids: ids that end an output; the first is the one refine appends.
        special_ids: ids never proposed as edits (EOS aside, which the length policy governs).
        decode: ``ids -> text`` without special tokens.
        encode: ``text -> ids`` without special tokens.
        token_str: ``id -> str`` display form of one token.
    """

    vocab_size: int
    eos_ids: tuple[int, ...]
    special_ids: frozenset[int]
    decode: Callable[[Sequence[int]], str]
    encode: Callable[[str], list[int]]
    token_str: Callable[[int], str]

    @property
    def eos(self) -> int:
        return self.eos_ids[0]


@dataclass(frozen=True)
class DecodeRequest:
    """Greedy continuation of ``tokens`` (an output prefix that ends with the forced, edited token).

    Attributes:
        tokens: the fixed output prefix; may be empty (decode from the prompt alone).
        max_new: at most this many tokens are generated after ``tokens``.
        min_new: EOS is not chosen before this many tokens are generated.
        force_eos: if generation reaches ``max_new``, the last generated token is EOS (scored, not sampled).
    """

    tokens: tuple[int, ...]
    max_new: int
    min_new: int = 0
    force_eos: bool = False


@dataclass(frozen=True)
class Decoded:
    """Result of one :class:`DecodeRequest`: the full output and scores from ``start`` on."""

    tokens: tuple[int, ...]
    scores: Scores


class Session(ABC):
    """Scoring and decoding for one prompt. Counts ``forward_tokens`` and ``forward_calls``."""

    prompt: tuple[int, ...]
    forward_tokens: int
    forward_calls: int

    @abstractmethod
    def score(self, start: int, seqs: Sequence[Sequence[int]]) -> list[Scores]:
        """Teacher-forced scores of ``seqs[r][start:]``; every ``seqs[r]`` is longer than ``start``."""

    @abstractmethod
    def decode(self, start: int, requests: Sequence[DecodeRequest]) -> list[Decoded]:
        """Greedy continuations; returned scores cover ``(tokens + generated)[start:]``."""

    @abstractmethod
    def score_cost(self, start: int, seqs: Sequence[Sequence[int]]) -> int:
        """Upper bound on the forward tokens :meth:`score` would spend now."""

    @abstractmethod
    def decode_cost(self, start: int, requests: Sequence[DecodeRequest]) -> int:
        """Upper bound on the forward tokens :meth:`decode` would spend now."""

    def close(self) -> None:
        """Release caches."""


class Backend(ABC):
    """A model and its tokenizer."""

    tokenizer: TokenizerView
    #: longest prompt + output the model accepts
    max_length: int
    #: a short name for reports
    name: str = "backend"

    @abstractmethod
    def open(self, prompt: Sequence[int], topk: int, max_batch_tokens: int) -> Session:
        """Start a session on ``prompt`` (a non-empty list of ids)."""

    def encode_prompt(self, prompt: str, chat: bool | None) -> list[int]:
        """Turn prompt text into ids (applying a chat template when ``chat`` is true or None and one exists)."""
        raise NotImplementedError(f"{type(self).__name__} takes token ids only")
