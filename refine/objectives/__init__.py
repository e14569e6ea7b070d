"""Objectives: what refinement maximises.

An :class:`Objective` is a weighted sum of :class:`Term` s. A term maps a batch of
candidate outputs (tokens, per-token log-probs, optionally decoded text) to one
number each; higher is better. Terms never call the model: the engine hands them
scores it already computed, so every term costs nothing beyond the forward passes.

Length handling is part of every log-probability term: ``sum`` prefers short
outputs (the empty answer is often the most probable), ``mean`` and ``gnmt``
normalise by length, ``length`` adds a per-token bonus to ``sum``.

Example:
    >>> import numpy as np
    >>> obj = Objective.from_spec({"sum": 1.0, "length": 0.5})
    >>> view = CandidateView(tokens=(5, 6, 2), logprobs=np.log([0.5, 0.5, 0.9]), ended=True)
    >>> round(float(obj.evaluate([view])[0][0]), 4)   # log .5 + log .5 + log .9 + 0.5 * 2 content tokens
    -0.4917

Modules: :mod:`~refine.objectives.term` (:class:`Term`, :data:`TERMS`, :class:`CandidateView`),
:mod:`~refine.objectives.objective` (:class:`Objective`), and one per family of registered terms:
:mod:`~refine.objectives.logprob` (``sum``, ``mean``, ``gnmt``, ``length``), :mod:`~refine.objectives.repetition`,
:mod:`~refine.objectives.coverage`, :mod:`~refine.objectives.reference` (``reference_ce``),
:mod:`~refine.objectives.reward`.
"""

from .coverage import Coverage, coverage
from .logprob import GNMTLogProb, LengthBonus, MeanLogProb, SumLogProb
from .objective import Objective
from .reference import ReferenceCrossEntropy
from .repetition import RepetitionPenalty
from .reward import Reward
from .term import TERMS, CandidateView, Term

__all__ = ["TERMS", "CandidateView", "Coverage", "GNMTLogProb", "LengthBonus", "MeanLogProb", "Objective",
           "ReferenceCrossEntropy", "RepetitionPenalty", "Reward", "SumLogProb", "Term", "coverage"]
