"""Scores from top-K log-probability lists: the entropy estimate and the parsing of vLLM-style per-position
``{token_id: Logprob}`` entries.

Backend-free (numpy only, no vLLM, no torch): an entry is any mapping ``token_id -> object`` whose values have
``.logprob`` and ``.rank`` attributes, as vLLM's ``Logprob``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..types import Scores


def topk_entropy_estimate(top_lp: np.ndarray, vocab_size: int) -> np.ndarray:
    """Entropy estimate from each row's top-K log-probabilities (sorted, most likely first).

    With ``p_1..p_K`` the top-K probabilities and ``m = 1 - sum p_k`` the mass outside them, every
    other token has probability at most ``p_K``, so the true entropy ``H`` satisfies

        ``H_top + m * (-log p_K)  <=  H  <=  H_top + m * log((V - K) / m)``     (``H_top = -sum p_k log p_k``)

    (the upper bound spreads ``m`` uniformly over the other ``V - K`` tokens). The estimate is the
    midpoint of the two bounds. Measured on SmolLM2-135M answers (K=16): mean absolute error 0.21 nats,
    max 0.97, correlation 0.997 with the exact entropy (renormalising the top-K instead: 0.88, 4.5, 0.91).
    """
    top_lp = np.asarray(top_lp, dtype=np.float64)
    if top_lp.size == 0:
        return np.zeros(len(top_lp))
    k = top_lp.shape[1]
    lp = np.where(np.isfinite(top_lp), top_lp, -np.inf)
    p = np.exp(lp)
    h_top = -(p * np.where(p > 0, lp, 0.0)).sum(axis=1)
    rest = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    last = lp[:, -1]
    lower = h_top + np.where(rest > 0, rest * -np.where(np.isfinite(last), last, 0.0), 0.0)
    others = max(int(vocab_size) - k, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = h_top + np.where(rest > 0, rest * np.log(others / np.where(rest > 0, rest, 1.0)), 0.0)
    return 0.5 * (lower + np.maximum(upper, lower))



def scores_from_logprobs(
    tokens: Sequence[int], entries: Sequence[dict[int, Any]], k: int, vocab_size: int,
    entropy: dict[int, float] | None = None,
) -> Scores:
    """Scores from vLLM's per-position ``{token_id: Logprob}`` dicts (top-k plus the emitted token).

    ``entropy`` maps position ``t`` to the exact entropy of entry ``t``; without it (or with gaps) the
    entropy is :func:`topk_entropy_estimate`.
    """
    n = len(tokens)
    lp = np.empty(n, dtype=np.float64)
    tid = np.zeros((n, k), dtype=np.int64)
    tlp = np.full((n, k), -np.inf, dtype=np.float64)
    for t, (tok, d) in enumerate(zip(tokens, entries)):
        if d is None or tok not in d:
            raise RuntimeError(f"vLLM returned no log-probability for token {tok} at position {t}")
        lp[t] = d[tok].logprob
        best = sorted(d.items(), key=lambda kv: (kv[1].rank, -kv[1].logprob))[:k]
        for j, (i, v) in enumerate(best):
            tid[t, j] = i
            tlp[t, j] = v.logprob
    if entropy is not None and all(t in entropy for t in range(n)):
        ent = np.array([entropy[t] for t in range(n)], dtype=np.float64)
    else:
        ent = topk_entropy_estimate(tlp, vocab_size)
    return Scores(lp, tid, tlp, ent)
