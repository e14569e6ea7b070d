"""ROUGE against several references, from the maintained ``rouge-score`` package.

ROUGE-1/2/L F1 with Porter stemming, the best reference counting (``RougeScorer.score_multi``),
so the figures are comparable with published CommonGen and E2E numbers.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

KINDS = ("rouge1", "rouge2", "rougeL")


@lru_cache(maxsize=1)
def _scorer():
    from refine.errors import require

    require("rouge_score", "rouge-score  (or the bench extra)")
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(KINDS), use_stemmer=True)


def rouge(hypothesis: str, references: Sequence[str]) -> dict[str, float]:
    """``{"rouge1", "rouge2", "rougeL"}`` F1 of ``hypothesis`` against its best-matching reference (0 without
    references)."""
    if not references:
        return {k: 0.0 for k in KINDS}
    scores = _scorer().score_multi(list(references), hypothesis)
    return {k: float(scores[k].fmeasure) for k in KINDS}
