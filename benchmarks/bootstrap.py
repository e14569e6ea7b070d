"""Paired bootstrap confidence intervals for the difference of two methods on the same items.

Each item gives one number per method (1/0 for "good output", a coverage, a judge score). The
paired bootstrap resamples *items* with replacement and recomputes the mean difference
``method - baseline`` on each resample; the interval is the central ``level`` share of those
means (percentile interval). Pairing matters: items differ far more from each other than the
methods do, and resampling the two columns separately would bury the effect in item noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    """Mean paired difference and its bootstrap interval.

    Attributes:
        diff: mean of ``a - b`` over the items.
        lo, hi: the percentile interval's ends.
        level: its coverage (e.g. 0.95).
        items: number of paired items.
    """

    diff: float
    lo: float
    hi: float
    level: float
    items: int

    @property
    def excludes_zero(self) -> bool:
        """The whole interval lies on one side of zero."""
        return self.lo > 0 or self.hi < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``mean(a - b)``, resampling items.

    >>> paired_bootstrap([1, 1, 1, 0], [0, 1, 1, 0]).diff
    0.25
    """
    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if x.ndim != 1 or len(a) != len(b):
        raise ValueError(f"paired samples must be two equally long 1-D sequences, got {len(a)} and {len(b)}")
    if len(x) == 0:
        raise ValueError("paired_bootstrap needs at least one item")
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))  # (R, n) item draws
    means = x[idx].mean(axis=1)  # (R,)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return Interval(float(x.mean()), float(lo), float(hi), level, len(x))


def versus(items: Sequence[dict], method: str, baselines: Sequence[str], keys: Sequence[str],
           resamples: int = 10_000) -> dict[str, dict[str, dict]]:
    """``{baseline: {key: interval of method − baseline}}`` over per-item records ``items[i]["methods"][m][key]``."""
    return {
        b: {k: paired_bootstrap([it["methods"][method][k] for it in items], [it["methods"][b][k] for it in items],
                                resamples=resamples, seed=0).to_dict() for k in keys}
        for b in baselines
    }
