"""The ``reference_ce`` term: how well an output's tokens fit the references' smoothed unigram distribution."""

from __future__ import annotations

import math
from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .term import TERMS, Term


@TERMS.register("reference_ce")
class ReferenceCrossEntropy(Term):
    """Minus the cross-entropy of the output's tokens under a reference's smoothed unigram distribution.

    With references R (text or token ids), q(w) = (count_R(w) + eps) / (|R| + eps * V), and the term is
    (1/|y|) * sum_t log q(y_t): outputs that reuse the references' tokens score higher. With several
    references the best one counts.
    """

    def __init__(self, references: Sequence[str] | Sequence[Sequence[int]] | str = (), eps: float = 0.1) -> None:
        if isinstance(references, str):
            references = [references]
        def valid(ref) -> bool:
            if isinstance(ref, str):
                return bool(ref)
            return isinstance(ref, (list, tuple)) and bool(ref) and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ref)

        if isinstance(references, Mapping) or not references or not all(valid(r) for r in references):
            raise ConfigError("`reference_ce.references` has to be a non-empty list of non-empty texts or token-id "
                              f"lists, but is {references!r}")
        if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and 0 < eps <= 1e6):
            raise ConfigError(f"`reference_ce.eps` has to be a number in (0, 1e6], but is {eps!r}")
        self.references = list(references)
        self.eps = float(eps)
        self._tables: list[tuple[Counter, int]] | None = None
        self._vocab = 0

    def bind(self, tokenizer) -> None:
        tables = []
        for ref in self.references:
            ids = tokenizer.encode(ref) if isinstance(ref, str) else list(ref)
            tables.append((Counter(ids), len(ids)))
        self._tables = tables
        self._vocab = tokenizer.vocab_size

    def values(self, views):
        if self._tables is None:
            raise RuntimeError("ReferenceCrossEntropy.bind(tokenizer) must be called before values()")
        out = []
        for v in views:
            toks = v.tokens[: v.content_length] or v.tokens
            best = -math.inf
            for counts, n in self._tables:
                denom = n + self.eps * self._vocab
                s = sum(math.log((counts.get(t, 0) + self.eps) / denom) for t in toks) / max(len(toks), 1)
                best = max(best, s)
            out.append(best)
        return np.array(out)

    def params(self):
        return {"references": [r if isinstance(r, str) else list(r) for r in self.references], "eps": self.eps}
