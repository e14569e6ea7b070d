"""The backend interface: how the engine gets log-probabilities from a model.

A :class:`Backend` wraps one model and its tokenizer. For each refinement the engine
opens a :class:`Session` on a fixed prompt; the session scores candidate outputs and
re-decodes suffixes, in batches, and counts every token position it runs through
the model (``forward_tokens``), padding and rejected candidates included.

Both calls take ``base``: the output the candidates were derived from (the current
hypothesis). For each row the session returns ``start``, a position with
``row[:start] == base[:start]``, and scores for positions ``start`` onwards only: the
engine already has ``base``'s scores for the shared prefix. A backend may reuse a
cache of ``prompt + base``; it must give the same numbers as a plain full forward pass
(the tests check this to 1e-4). Returning ``start = 0`` (score everything) is always valid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

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
    """Continuation of ``tokens`` (an output prefix that ends with the forced, edited token).

    By default the continuation is greedy. ``beam > 1`` runs a beam search of that width instead and returns its
    best complete beam by sum log P; ``temperature > 0`` samples each token from p^(1/temperature), renormalised,
    with a generator seeded by ``seed`` (the same request gives the same sample whatever it is batched with).

    Attributes:
        tokens: the fixed output prefix; may be empty (decode from the prompt alone).
        max_new: at most this many tokens are generated after ``tokens``.
        min_new: EOS is not chosen before this many tokens are generated.
        force_eos: if generation reaches ``max_new``, the last generated token is EOS (scored, not sampled).
        beam: beam width (1: greedy). Not combined with sampling.
        temperature: 0 decodes deterministically; above 0 samples at this temperature.
        seed: the sampling seed (required when ``temperature > 0``).
        fork: ``(parent, keep)``: branch off request ``parent`` of the same :meth:`Session.decode` call once it
            has generated ``keep`` (>= 1) tokens. The request keeps the parent's ``tokens`` and first ``keep``
            generated tokens, then decodes on by its own rules (its first own token is drawn from the very
            distribution the parent draws its next token from), so it costs no prefill: a continuation of a
            prefix that is itself being decoded. ``tokens`` and ``max_new`` count as the parent's do (equal
            ``tokens``; ``max_new`` > ``keep``). A parent that stops before ``keep`` tokens leaves the branch
            unrun: its result is the parent's output with ``Decoded.forked`` False. Only backends whose sessions
            set :attr:`Session.supports_fork` take such requests.
    """

    tokens: tuple[int, ...]
    max_new: int
    min_new: int = 0
    force_eos: bool = False
    beam: int = 1
    temperature: float = 0.0
    seed: int | None = None
    fork: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"`beam` has to be >= 1, but is {self.beam!r}")
        if self.temperature < 0:
            raise ValueError(f"`temperature` has to be >= 0, but is {self.temperature!r}")
        if self.temperature > 0 and (self.beam > 1 or self.seed is None):
            raise ValueError("a sampled request (`temperature` > 0) needs a `seed` and `beam=1`, "
                             f"but has seed={self.seed!r}, beam={self.beam!r}")
        if self.fork is not None:
            parent, keep = self.fork
            if parent < 0 or not 1 <= keep < self.max_new or self.beam > 1:
                raise ValueError(f"`fork`=(parent, keep) needs parent >= 0, 1 <= keep < max_new and beam=1, but is "
                                 f"{self.fork!r} with max_new={self.max_new}, beam={self.beam}")

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class Decoded:
    """Result of one :class:`DecodeRequest`: the full output (request tokens + generated) and its scores
    from the row's ``start`` on."""

    tokens: tuple[int, ...]
    scores: Scores
    #: decoding stopped early because the caller's ``prune`` callback rejected the partial continuation
    pruned: bool = False
    #: for a sampled request: per generated token, its log-probability under the distribution it was drawn
    #: from (a forced EOS: 0); ``None`` otherwise. The sum is the proposal's log-density.
    sample_logprobs: np.ndarray | None = None
    #: for a ``fork`` request: whether it branched off (False: its parent stopped before the branch point, and
    #: ``tokens``/``scores`` are the parent's); None for other requests
    forked: bool | None = None


#: ``prune(row, tokens, scores) -> bool``: called during decoding with a row's partial output and its scores
#: from the row's ``start``; returning True stops that row (its result is marked ``pruned``).
PruneFn = Callable[[int, tuple, Scores], bool]


class Session(ABC):
    """Scoring and decoding for one prompt. Counts ``forward_tokens`` and ``forward_calls``."""

    prompt: tuple[int, ...]
    forward_tokens: int
    forward_calls: int
    #: whether :meth:`decode` takes ``fork`` requests (see :class:`DecodeRequest`)
    supports_fork: bool = False
    #: ``time.monotonic()`` value after which :meth:`decode` may stop part-way by raising
    #: :class:`~refine.errors.DeadlineReached` (what it spent stays counted); None: no deadline. The engine sets
    #: it from ``Budget.max_seconds`` once the output being refined is scored. Both shipped backends honour it
    #: inside a call (between decoding steps; vLLM: engine requests aborted); a backend that cannot may ignore it,
    #: and the engine still checks the limit before each step.
    deadline: float | None = None
    #: ids no continuation may contain (``RefineConfig.forbid``): the engine sets them before the first call. A
    #: session masks them in every decoding step (greedy, beam, sampled: renormalised over the rest) and takes
    #: the top-k alternatives it reports among the other ids; target scores are the model's, unchanged. A
    #: backend that cannot leaves :attr:`supports_banned` False, and the engine refuses ``forbid`` for it.
    banned: frozenset[int] = frozenset()
    #: whether the session honours :attr:`banned`
    supports_banned: bool = False

    @abstractmethod
    def score(self, seqs: Sequence[Sequence[int]], base: Sequence[int] = ()) -> list[tuple[int, Scores]]:
        """Teacher-forced scores: per row ``(start, scores of row[start:])`` with ``row[:start] == base[:start]``
        and ``start < len(row)``."""

    @abstractmethod
    def decode(self, requests: Sequence[DecodeRequest], base: Sequence[int] = (),
               limit: float | None = None, prune: PruneFn | None = None) -> list[tuple[int, Decoded]]:
        """Continuations (greedy, beam or sampled: see :class:`DecodeRequest`): per request ``(start, Decoded)``; ``Decoded.scores`` covers
        ``Decoded.tokens[start:]`` (the request's tokens from ``start`` on, then the generated ones), with
        ``tokens[:start] == base[:start]``.

        ``limit`` (at least :meth:`decode_cost`) caps the forward tokens this call may spend; a backend may use
        the room above the plain cost to speculate (e.g. verify drafts taken from ``base``). ``prune``, if given,
        is asked about partial continuations; a backend may ignore it."""

    @abstractmethod
    def score_cost(self, seqs: Sequence[Sequence[int]], base: Sequence[int] = ()) -> int:
        """Upper bound on the forward tokens :meth:`score` would spend now."""

    @abstractmethod
    def decode_cost(self, requests: Sequence[DecodeRequest], base: Sequence[int] = ()) -> int:
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


@dataclass(frozen=True)
class TokenGradients:
    """First-order information about an output ``y`` (length T) given the prompt, from one forward and one
    backward pass.

    Attributes:
        logprobs: ``(T, V)`` log p(v | x, y[:t]) for every token v: the exact *local* term of a substitution at t.
        onehot: ``(T, V)`` the gradient of L(y) = sum_t log p(y_t | x, y[:t]) with respect to the one-hot
            indicator of the token fed as input at position t (the targets held fixed). Since the input embedding
            is ``E^T onehot``, ``onehot[t, v] = E[v] . dL/d(embedding_t)``; replacing y_t by v changes the terms
            after t by about ``onehot[t, v] - onehot[t, y_t]`` (first order). Row T-1 is 0: the last token is fed
            to nothing. May hold non-finite values when the model's gradient does (callers guard).
    """

    logprobs: np.ndarray
    onehot: np.ndarray


class GradientSession(ABC):
    """An optional capability of a :class:`Session`: gradients of the output's log-probability with respect to
    its input tokens, and a forward pass on *soft* inputs (mixtures of token embeddings).

    A session that has it subclasses this too (the transformers backend does; the vLLM backend does not). The
    prompt is held constant: only the output's inputs are differentiated. Both calls count their tokens in the
    session's ``forward_tokens`` / ``forward_calls`` by one rule: a backward pass costs what its forward pass
    cost (the same tokens, one more call), and prompt tokens not cached yet are forwarded once, without grad.
    """

    @abstractmethod
    def gradient_cost(self, n_tokens: int) -> int:
        """Upper bound on the forward tokens one :meth:`token_gradients` or :meth:`relaxed_objective` call on an
        output of ``n_tokens`` tokens spends now."""

    @abstractmethod
    def token_gradients(self, tokens: Sequence[int]) -> TokenGradients:
        """Local log-probabilities and one-hot input gradients of ``tokens`` (see :class:`TokenGradients`)."""

    @abstractmethod
    def relaxed_objective(self, candidates: np.ndarray, logits: np.ndarray) -> tuple[float, np.ndarray]:
        """The expected log-probability of a relaxed output and its gradient with respect to ``logits``.

        Position t holds a soft token: weights w_t = softmax(logits[t]) over the token ids ``candidates[t]``
        (``(T, K)`` both; a logit of -inf switches a column off). The model is fed, after the prompt, the soft
        embeddings e_t = sum_k w_tk E[candidates[t, k]], and the value is

            J = sum_t sum_k w_tk log p(candidates[t, k] | x, e_<t),

        the log-probability of the output averaged over the soft targets. Returns ``(J, dJ/dlogits (T, K))``;
        a one-hot ``w`` gives J = log P(y | x) of that output.
        """
