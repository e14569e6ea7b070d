"""Hybrid: relaxed phases alternating with coordinate-descent sweeps.

A round is a relaxed phase (rounds of :class:`~refine.strategies.relaxed.Relaxed` until one accepts nothing)
followed by one sweep of :class:`~refine.strategies.coordinate.CoordinateDescent` over the output's positions.
The relaxation moves many positions at once along the model's gradient (it can leave a basin a one-token move
cannot); the sweep then polishes the result token by token with the configured moves (re-decoding included). The
search converges when a whole round accepts nothing. Both parts run as they do alone (composition: their own
sweeps end through :meth:`Search.end_sweep`, so ``budget.max_sweeps`` counts both). Options are the relaxed
strategy's. Needs the transformers backend.

Example:
    >>> from refine import RefineConfig
    >>> cfg = RefineConfig(strategy="hybrid", strategy_options={"steps": 5})
"""

from __future__ import annotations

from ..search import Search
from ..types import Hypothesis
from ..strategy import STRATEGIES, Strategy
from .coordinate import CoordinateDescent
from .relaxed import Relaxed


@STRATEGIES.register("hybrid")
class Hybrid(Strategy):
    """Relaxed phases and coordinate sweeps in turn; see the module docstring. Options: those of ``relaxed``."""

    name = "hybrid"

    def __init__(self, **relaxed_options) -> None:
        self.relaxed = Relaxed(**relaxed_options)
        self.coordinate = CoordinateDescent()

    def start(self, search: Search) -> None:
        self.relaxed.start(search)
        self._phase = "relaxed"
        self._accepted = search.stats.accepted  # accepted edits when the round began
        self._sweeps = 0

    def step(self, search: Search) -> bool:
        if self._phase == "relaxed":
            if not self.relaxed.step(search):
                self._phase = "coordinate"
                self.coordinate.start(search)
                self._sweeps = search.stats.sweeps
            return True
        more = self.coordinate.step(search)
        if more and search.stats.sweeps == self._sweeps:
            return True  # the sweep goes on
        if search.stats.accepted == self._accepted:
            return False  # a whole round without an accepted edit: converged
        self._accepted = search.stats.accepted
        self._phase = "relaxed"
        return True

    def result(self, search: Search) -> Hypothesis:
        # stopped inside a coordinate sweep: that sweep's own rule for what it had found so far applies
        return self.coordinate.result(search) if self._phase == "coordinate" else search.best()
