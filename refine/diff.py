"""Token-level diffs for showing what refinement changed."""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

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
