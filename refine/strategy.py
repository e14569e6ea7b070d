"""The strategy interface and its registry, :data:`STRATEGIES`.

A strategy decides what the search engine (:class:`refine.search.Search`) evaluates next;
the engine owns the budget, the objective and the acceptance rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .search import Search
    from .types import Hypothesis


class Strategy:
    """A search strategy. Subclasses register with ``@STRATEGIES.register(name)`` and implement :meth:`step`.

    ``step`` does one unit of work (normally one batched :meth:`Search.evaluate`) and returns False once the
    strategy has converged. Budget limits are enforced by :func:`refine.search.run_search` and
    :meth:`Search.evaluate`.
    """

    name: str = "strategy"
    #: whether the strategy can start from an empty output: a sampler whose outputs are drawn from the model
    #: (``power``, ``power_smc``) rather than edited from the start (:meth:`Search.score_initial`)
    from_nothing: bool = False

    def __init__(self, **options) -> None:
        if options:
            raise ConfigError(f"strategy {self.name!r} takes no options, got {sorted(options)}")

    def start(self, search: "Search") -> None:
        """Called once after the initial output is scored."""

    def step(self, search: "Search") -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def result(self, search: Search) -> Hypothesis:
        """The output the refinement returns: by default the best one found (:meth:`Search.best`)."""
        return search.best()

    def extras(self, search: Search) -> dict[str, Any]:
        """What the strategy reports besides the output, as plain JSON data (``RefineResult.extras``)."""
        return {}


STRATEGIES: Registry[Strategy] = Registry("strategy", Strategy)
