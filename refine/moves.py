"""Moves: the neighbourhood of an output at one position.

A move looks at a scored :class:`~refine.types.Hypothesis` and a position ``i`` and
returns :class:`Proposal` s. Candidate tokens come from the model's own top-k at
``i`` (free: the forward pass that scored the hypothesis computed them).

- ``substitute``: replace ``y[i]`` by ``v``, suffix held fixed (proposing EOS truncates).
- ``regenerate``: replace ``y[i]`` by ``v`` and re-decode the suffix greedily (bounded length).
- ``regenerate_beam``: the same, the suffix re-decoded by a beam search of width ``regen_beam``.
- ``delete``: drop ``y[i]``.
- ``insert``: put ``v`` before ``y[i]``.
- ``phrase``: write one of ``RefineConfig.phrases`` whole at a sentence or line boundary, inserted or with the
  rest re-decoded after it, or put a pair of ``RefineConfig.wrap`` around the whole output (:mod:`refine.phrases`).

Moves never run the model; the engine evaluates proposals in batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .backends.base import TokenizerView
from .phrases import PhraseIds, after_line_start, boundary, sentence_cuts, wrapped
from .registry import Registry
from .types import Hypothesis


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


def _truncation(name: str, y: tuple[int, ...], i: int, eos: int, prior: float) -> Proposal:
    return Proposal(name, i, y[:i] + (eos,), prior=prior)


@MOVES.register("substitute")
class Substitute(Move):
    """Replace ``y[i]`` by a top-k alternative, keeping the rest of the output as it is."""

    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        if i >= len(y) or (ctx.ended(y) and i == len(y) - 1):
            return []  # a final EOS is never substituted (the output would stop being terminated)
        old_lp = float(hyp.scores.logprobs[i])
        out = []
        for v, lp in ctx.candidates(hyp, i, exclude=(y[i],)):
            if v in ctx.eos_set:
                out.append(_truncation(self.name, y, i, v, lp - old_lp))
                continue
            cand = y[:i] + (v,) + y[i + 1 :]
            if ctx.roundtrip_ok(cand):
                out.append(Proposal(self.name, i, cand, prior=lp - old_lp))
        return out


@MOVES.register("regenerate")
class Regenerate(Move):
    """Replace ``y[i]`` by a top-k alternative and re-decode everything after it greedily.

    The new suffix may be up to ``regen_extra_tokens`` longer than the old one (``length="fixed"``: exactly
    as long, with EOS kept last). At a final EOS this continues the answer instead of ending it.
    """

    def beam(self, ctx: MoveContext) -> int:
        """Beam width of the re-decoding (1: greedy)."""
        return 1

    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        if i >= len(y):
            return []
        ended = ctx.ended(y)
        old_suffix = len(y) - i - 1  # tokens after position i
        if ctx.length == "fixed":
            if ended and i == len(y) - 1:
                return []
            max_new = old_suffix
            min_new = old_suffix - (1 if ended else 0)
            force_eos = ended
        else:
            max_new = min(old_suffix + ctx.regen_extra_tokens, ctx.max_output_tokens - (i + 1))
            min_new = 0
            force_eos = ended and ctx.length == "keep_eos"
        if max_new < 0:
            return []
        old_lp = float(hyp.scores.logprobs[i])
        out = []
        for v, lp in ctx.candidates(hyp, i, exclude=(y[i],)):
            if v in ctx.eos_set:
                out.append(_truncation(self.name, y, i, v, lp - old_lp))
                continue
            prefix = y[:i] + (v,)
            if not ctx.roundtrip_ok(prefix):
                continue
            if max_new == 0:
                out.append(Proposal(self.name, i, prefix, prior=lp - old_lp))
            else:
                out.append(Proposal(self.name, i, prefix, decode=True, max_new=max_new, min_new=min_new,
                                    force_eos=force_eos, prior=lp - old_lp, beam=self.beam(ctx)))
        return out


@MOVES.register("regenerate_beam")
class RegenerateBeam(Regenerate):
    """``regenerate`` whose suffix is re-decoded by a beam search of width ``regen_beam`` instead of greedily.

    A greedy suffix commits to each token; a beam keeps ``regen_beam`` partial suffixes, so one that pays for an
    unlikely token early and recovers later survives. The beams of every proposal of a block decode together in
    one batch per step; the best complete beam (by sum log P) is the candidate. With ``prune_margin`` set, the
    lookahead test is asked about each proposal's best partial beam.
    """

    def beam(self, ctx: MoveContext) -> int:
        return ctx.regen_beam


@MOVES.register("delete")
class Delete(Move):
    """Drop ``y[i]`` (never a final EOS)."""

    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        content = len(y) - (1 if ctx.ended(y) else 0)
        if i >= content or ctx.length == "fixed":
            return []
        cand = y[:i] + y[i + 1 :]
        if not cand or not ctx.roundtrip_ok(cand):
            return []
        return [Proposal(self.name, i, cand, prior=-float(hyp.scores.logprobs[i]) - 1.0)]


@MOVES.register("insert")
class Insert(Move):
    """Insert a top-k token before ``y[i]`` (before the final EOS at most)."""

    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        content = len(y) - (1 if ctx.ended(y) else 0)
        if i > content or i >= len(y) or ctx.length == "fixed" or len(y) + 1 > ctx.max_output_tokens:
            return []
        out = []
        for v, lp in ctx.candidates(hyp, i, exclude=(y[i],) + tuple(ctx.eos_set)):
            cand = y[:i] + (v,) + y[i:]
            if ctx.roundtrip_ok(cand):
                out.append(Proposal(self.name, i, cand, prior=lp))
        return out


@MOVES.register("phrase")
class PhraseMove(Move):
    """Write a phrase of ``RefineConfig.phrases`` whole before ``y[i]``, where ``i`` is the start, follows a
    sentence end or line break, or is the end of the output (before a final EOS): once inserted (the rest kept)
    and once continued (the rest re-decoded after it, as ``regenerate`` bounds it). At ``i = 0`` it also puts
    each pair of ``RefineConfig.wrap`` around the whole output. See :mod:`refine.phrases`."""

    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        ended = ctx.ended(y)
        content = len(y) - (1 if ended else 0)
        if ctx.length == "fixed" or i > content or i >= len(y):
            return []
        out = self.wrap(y, content, ctx) if i == 0 else []
        if not ctx.phrases:
            return out
        prev = ctx.tokenizer.decode([y[i - 1]]) if i > 0 else None
        if 0 < i < content and not boundary(prev):
            return out
        # inserted whole only where the text after it starts apart from it (else the phrase's last word and the
        # next one would run together); the continued form always fits
        apart = i >= content or ctx.tokenizer.decode([y[i]])[:1] in ("", " ", "\n", "\t")
        for phrase in ctx.phrases:
            ids = phrase.bare if after_line_start(prev) else phrase.spaced
            if y[i : i + len(ids)] == ids:
                continue  # already written here
            inserted = y[:i] + ids + y[i:]
            if apart and len(inserted) <= ctx.max_output_tokens and ctx.roundtrip_ok(inserted):
                out.append(Proposal(self.name, i, inserted))
            prefix = y[:i] + ids
            max_new = min(len(y) - i + ctx.regen_extra_tokens, ctx.max_output_tokens - len(prefix))
            # a phrase goes in beside the answer, not instead of it: the re-decoded rest is at least half as long
            # as the text it replaces (a closing phrase alone would otherwise stand for the whole answer)
            min_new = min((content - i) // 2, max_new)
            if max_new > 0 and ctx.roundtrip_ok(prefix):
                out.append(Proposal(self.name, i, prefix, decode=True, max_new=max_new, min_new=min_new,
                                    force_eos=ended and ctx.length == "keep_eos"))
        return out

    def wrap(self, y: tuple[int, ...], content: int, ctx: MoveContext) -> list[Proposal]:
        """Each pair of ``ctx.wraps`` put around the whole output, its text tokenized afresh (the final EOS kept);
        none where the output already reads as wrapped in it, or where the result would be too long or would
        write a banned token."""
        if not ctx.wraps or content == 0:
            return []
        text = ctx.tokenizer.decode(list(y[:content]))
        out = []
        for before, after in ctx.wraps:
            if wrapped(text, before, after):
                continue
            ids, tail = tuple(ctx.tokenizer.encode(before + text + after)), y[content:]  # tail: the final EOS, if any
            if len(ids) + len(tail) > ctx.max_output_tokens and not tail and ctx.allow_eos:
                # cut by the cap: closed early to make room, and ended
                ids, tail = self.closed(text, before, after, ctx), (ctx.tokenizer.eos_ids[0],)
            if ids and len(ids) + len(tail) <= ctx.max_output_tokens and not set(ids) & (ctx.banned | ctx.eos_set) \
                    and not set(tail) & ctx.banned:
                out.append(Proposal(self.name, 0, ids + tail))
        return out

    #: sentence ends tried, last first, when closing a cut output early for a wrap
    MAX_CUTS = 8

    def closed(self, text: str, before: str, after: str, ctx: MoveContext) -> tuple[int, ...]:
        """``text`` closed at its last sentence end that leaves room under the cap for itself and an EOS, wrapped
        (empty when none of the last few does)."""
        for cut in sentence_cuts(text)[: self.MAX_CUTS]:
            ids = tuple(ctx.tokenizer.encode(before + text[:cut].rstrip() + after))
            if len(ids) + 1 <= ctx.max_output_tokens:
                return ids
        return ()


def rank_positions(hyp: Hypothesis, order: str) -> list[int]:
    """Positions of ``hyp`` in visiting order.

    ``margin``: least confident first (smallest log p(y_i) minus the best alternative);
    ``entropy``: most uncertain distribution first; ``left_to_right``: 0, 1, 2, ...
    Ties keep left-to-right order.
    """
    n = len(hyp.tokens)
    if order == "left_to_right":
        return list(range(n))
    if order == "margin":
        key = hyp.scores.margin(hyp.tokens)
    elif order == "entropy":
        key = -hyp.scores.entropy
    else:
        raise ValueError(f"unknown position order {order!r}")
    return [int(i) for i in np.argsort(key, kind="stable")]


def build_moves(names: Sequence[str]) -> list[Move]:
    return [MOVES.get(n, field="moves")() for n in names]
