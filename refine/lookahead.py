"""The lookahead test that stops hopeless re-decoded suffixes early (``RefineConfig.prune_margin``,
``prune_keep``).

Heuristic by design: it only decides what to finish decoding; accepted candidates are always complete and exactly
scored.
"""

from __future__ import annotations

import numpy as np

from .backends.base import PruneFn
from .objectives import CandidateView, Objective
from .types import Hypothesis, Scores


def lookahead_pruner(objective: Objective, parent: Hypothesis, margin: float, keep: int | None) -> PruneFn:
    """The test for suffixes re-decoded from ``parent``: stop one whose partial output scores worse than the
    parent cut at the same length by more than ``margin`` (the parent's full value once longer), unless its lead
    over the parent ranks among the ``keep`` best leads of this batch (each row's lead as of its latest check;
    stopped rows drop out). ``keep=None``: no such relief.

    The returned function keeps the batch's leads: use one per decoding call.
    """
    par_lp = parent.scores.logprobs
    leads: dict[int, float] = {}  # row -> lead over the parent at its latest check (rows not stopped)

    def prune(row: int, tokens: tuple, scores: Scores) -> bool:
        start = len(tokens) - len(scores)
        cand = CandidateView(tokens, np.concatenate([par_lp[:start], scores.logprobs]))
        L = len(tokens)
        if L >= len(parent.tokens):
            (v,), _ = objective.evaluate([cand])
            lead = v - parent.value
        else:
            ref = CandidateView(parent.tokens[:L], par_lp[:L])
            (v, ref_v), _ = objective.evaluate([cand, ref])
            lead = v - ref_v
        leads[row] = lead
        if lead >= -margin:
            return False
        if keep is not None and sum(x > lead for x in leads.values()) < keep:
            return False
        del leads[row]
        return True

    return prune
