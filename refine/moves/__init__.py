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

Modules: :mod:`~refine.moves.move` (:class:`Move`, :class:`Proposal`, :class:`MoveContext`, :data:`MOVES`),
:mod:`~refine.moves.token` (the token moves), :mod:`~refine.moves.phrase` (``phrase``),
:mod:`~refine.moves.positions` (visiting order).
"""

from .move import MOVES, Move, MoveContext, Proposal, build_moves
from .phrase import PhraseMove
from .positions import rank_positions
from .token import Delete, Insert, Regenerate, RegenerateBeam, Substitute

__all__ = ["MOVES", "Delete", "Insert", "Move", "MoveContext", "PhraseMove", "Proposal", "Regenerate",
           "RegenerateBeam", "Substitute", "build_moves", "rank_positions"]
