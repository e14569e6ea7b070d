"""The order in which a sweep visits an output's positions."""

from __future__ import annotations

import numpy as np

from ..types import Hypothesis


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
