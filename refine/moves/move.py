"""What a move is: :class:`Move` proposes :class:`Proposal` s at one position of a hypothesis, given a
:class:`MoveContext`; moves register by name in :data:`MOVES`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.base import TokenizerView
from ..phrases import PhraseIds
from ..registry import Registry
from ..types import Hypothesis


@dataclass(frozen=True)
class Proposal:
    """A candidate edit to evaluate.

    Attributes:
        move: name of the move that made it.
        position: the edited position in the parent.
        tokens: for a scored proposal, the full candidate output; for a decode proposal, the fixed prefix
            (ending with the edited token) to continue.
        decode: whether the suffix is re-decoded.
        max_new, min_new, force_eos: decode bounds (see :class:`~refine.backends.base.DecodeRequest`).
        beam, temperature, seed: how the suffix is decoded (greedy by default; see
            :class:`~refine.backends.base.DecodeRequest`).
        prior: immediate change in log-probability at ``position`` (used to rank proposals when the budget
            cannot afford all of them).
        fork: ``(parent key, keep)``: a decode proposal that branches off the decode proposal with that
            :attr:`key`, evaluated in the same call, after its first ``keep`` generated tokens (``tokens`` and
            ``max_new`` as the parent's; see ``DecodeRequest.fork``). Only where :attr:`Search.can_fork`.
    """

    move: str
    position: int
    tokens: tuple[int, ...]
    decode: bool = False
    max_new: int = 0
    min_new: int = 0
    force_eos: bool = False
    prior: float = 0.0
    beam: int = 1
    temperature: float = 0.0
    seed: int | None = None
    fork: tuple[tuple, int] | None = None

    @property
    def key(self) -> tuple:
        """Identifies the resulting candidate: equal keys give equal candidates (greedy and beam decoding are
        deterministic; a sample is fixed by its seed)."""
        if not self.decode:
            return (self.tokens,)
        base = (self.tokens, self.max_new, self.min_new, self.force_eos, self.beam, self.temperature, self.seed)
        return base if self.fork is None else base + (self.fork,)


@dataclass
class MoveContext:
    """What moves need besides the hypothesis: the tokenizer, the config's policies and the length cap."""

    tokenizer: TokenizerView
    top_k: int
    length: str
    regen_extra_tokens: int
    max_output_tokens: int
    exclude_special: bool = True
    require_roundtrip: bool = False
    regen_beam: int = 4
    #: ids ``RefineConfig.forbid`` rules out (:mod:`refine.forbid`)
    forbidden: frozenset[int] = frozenset()
    #: ``RefineConfig.phrases`` tokenized (:func:`refine.phrases.encode_phrases`), for the ``phrase`` move
    phrases: tuple[PhraseIds, ...] = ()
    #: ``RefineConfig.wrap``: ``(before, after)`` text the ``phrase`` move puts around the whole output
    wraps: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        self.eos_set = frozenset(self.tokenizer.eos_ids)
        special = frozenset(self.tokenizer.special_ids) - self.eos_set if self.exclude_special else frozenset()
        #: ids no edit puts in: special tokens (unless allowed) and forbidden ones
        self.banned = special | self.forbidden
        self.allow_eos = self.length == "free"

    def ended(self, tokens: Sequence[int]) -> bool:
        return bool(tokens) and tokens[-1] in self.eos_set

    def candidates(self, hyp: Hypothesis, i: int, exclude: Sequence[int] = ()) -> list[tuple[int, float]]:
        """Up to ``top_k`` ``(token, logprob)`` pairs from the model's top-k at position ``i``."""
        out = []
        for tok, lp in zip(hyp.scores.topk_ids[i].tolist(), hyp.scores.topk_logprobs[i].tolist()):
            if tok in exclude or tok in self.banned or (tok in self.eos_set and not self.allow_eos):
                continue
            if not np.isfinite(lp):
                continue
            out.append((tok, lp))
            if len(out) == self.top_k:
                break
        return out

    def roundtrip_ok(self, tokens: Sequence[int]) -> bool:
        """Whether decoding then re-encoding the content tokens gives the same ids."""
        if not self.require_roundtrip:
            return True
        content = [t for t in tokens if t not in self.eos_set]
        return self.tokenizer.encode(self.tokenizer.decode(content)) == content


class Move(ABC):
    """Proposes edits at one position. Subclasses register with ``@MOVES.register(name)``."""

    name: str = "move"

    @abstractmethod
    def propose(self, hyp: Hypothesis, i: int, ctx: MoveContext) -> list[Proposal]:
        """Proposals at position ``i`` (an empty list where the move does not apply)."""


MOVES: Registry[Move] = Registry("move", Move)


def build_moves(names: Sequence[str]) -> list[Move]:
    """One instance of each named move (registered names; a bad name: :class:`~refine.errors.ConfigError`)."""
    return [MOVES.get(n, field="moves")() for n in names]
