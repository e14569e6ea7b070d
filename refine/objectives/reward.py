"""The ``reward`` term: a user function of the decoded text."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import ConfigError, RewardError
from .term import TERMS, Term


@TERMS.register("reward")
class Reward(Term):
    """A user function of the decoded text, ``fn(text) -> float`` (or ``fn(texts) -> floats`` with
    ``batched=True``). An exception or a non-finite value stops the refinement with :class:`RewardError`."""

    needs_text = True

    def __init__(self, fn: Callable | None = None, batched: bool = False) -> None:
        if not callable(fn):
            raise ConfigError(f"`reward.fn` has to be a callable taking the decoded text, but is {fn!r}")
        self.fn = fn
        self.batched = bool(batched)

    def values(self, views):
        texts = [v.text or "" for v in views]
        try:
            raw = list(self.fn(texts)) if self.batched else [self.fn(t) for t in texts]
        except Exception as exc:  # user code: report, never swallow
            raise RewardError(f"the reward function {self.fn!r} raised {type(exc).__name__}: {exc}") from exc
        if len(raw) != len(texts):
            raise RewardError(f"the batched reward function returned {len(raw)} values for {len(texts)} texts")
        vals = []
        for text, r in zip(texts, raw):
            try:
                f = float(r)
            except (TypeError, ValueError) as exc:
                raise RewardError(f"the reward function returned {r!r} (not a number) for {text!r}") from exc
            if not math.isfinite(f):
                raise RewardError(f"the reward function returned {f} for {text!r}; rewards must be finite")
            vals.append(f)
        return np.array(vals)

    def params(self):
        return {"fn": getattr(self.fn, "__name__", repr(self.fn)), "batched": self.batched}
