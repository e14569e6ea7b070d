"""Token-level diffs: what refinement changed, as the smallest changed span (an edit's record) and as text."""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

from .backends.prefix import common_prefix

_RED, _GREEN, _RESET = "\033[31m", "\033[32m", "\033[0m"


def token_diff(old: Sequence[int], new: Sequence[int], token_str: Callable[[int], str], color: bool = False) -> str:
    """Render ``old -> new`` as one line: unchanged tokens as text, removals ``[-...-]``, additions ``{+...+}``.

    >>> token_diff([1, 2, 3], [1, 4, 3], lambda t: "abcd"[t - 1])
    'a[-b-]{+d+}c'
    """
    parts = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(a=list(old), b=list(new), autojunk=False).get_opcodes():
        old_txt = "".join(token_str(t) for t in old[a0:a1])
        new_txt = "".join(token_str(t) for t in new[b0:b1])
        if op == "equal":
            parts.append(old_txt)
            continue
        if old_txt:
            parts.append(f"{_RED}[-{old_txt}-]{_RESET}" if color else f"[-{old_txt}-]")
        if new_txt:
            parts.append(f"{_GREEN}{{+{new_txt}+}}{_RESET}" if color else f"{{+{new_txt}+}}")
    return "".join(parts)


def changed_span(old: Sequence[int], new: Sequence[int]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """``(position, old_tokens, new_tokens)`` of the smallest span that turns ``old`` into ``new``.

    >>> changed_span((1, 2, 3, 4), (1, 9, 3, 4))
    (1, (2,), (9,))
    """
    p = common_prefix(old, new)
    s = 0
    while s < min(len(old), len(new)) - p and old[len(old) - 1 - s] == new[len(new) - 1 - s]:
        s += 1
    return p, tuple(old[p : len(old) - s]), tuple(new[p : len(new) - s])
