"""Common prefixes of token sequences: where a candidate starts to differ from the output it came from.

Backend-free (no vLLM, no torch): the search and every backend share these helpers.
"""

from __future__ import annotations

from typing import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``.

    >>> common_prefix((1, 2, 3), (1, 2, 4, 5))
    2
    """
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def score_start(row: Sequence[int], base: Sequence[int]) -> int:
    """First position of ``row`` to score against ``base``: after their common prefix, but at least the row's
    last token (a row equal to ``base`` still gets its last position scored).

    >>> score_start((1, 2, 3), (1, 2, 9)), score_start((1, 2, 3), (1, 2, 3)), score_start((5,), ())
    (2, 2, 0)
    """
    return max(0, min(common_prefix(row, base), len(row) - 1))
