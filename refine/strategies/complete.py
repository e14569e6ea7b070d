"""Offering a sampler's draws as the refinement's output: only complete ones, only admissible ones.

A sampler that grows outputs block by block (``power``, ``power_smc``) evaluates draws cut at an earlier
block's length; those are states of a shorter target, not answers (their mean log P per token would flatter
them). A draw is complete when it ended or has the full length cap.
"""

from __future__ import annotations

from typing import Sequence

from ..moves import Proposal
from ..search import Search
from ..types import Hypothesis


def keep_best_complete(search: Search, results: Sequence[tuple[Proposal, Hypothesis]]) -> None:
    """Offer the best complete draw among ``results`` that is admissible against the current output to
    :meth:`Search.accept` (which takes it only if it beats the current output)."""
    cap = search.max_output_tokens
    ok = [r for r in results if (r[1].ended or len(r[1].tokens) >= cap) and search.admissible(r[1], search.current)]
    if ok:
        search.accept(*max(ok, key=lambda r: r[1].value))
