"""Best-first search over edits: coordinate descent that can step through a worse output."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..search import Search
from ..strategy import STRATEGIES, Strategy
from ..types import Hypothesis


@dataclass
class _Node:
    hyp: Hypothesis
    queue: list[int] | None = None  # positions not yet tried from this output (None: not started)


@STRATEGIES.register("best_first")
class BestFirst(Strategy):
    """Keep the ``pool`` best outputs found so far; always expand the best one with positions left to try.

    Expanding means what one coordinate-descent step does: propose every configured move at the next
    ``block_size`` positions of that output (in ``config.positions`` order, at most ``max_positions``) and
    evaluate them in one batch. Every valid candidate joins the pool if it ranks among the ``pool`` best.

    While edits keep improving, the best output is always the one expanded, so this walks the same path as
    coordinate descent would (though a new best output starts its own position order at once). Where coordinate
    descent stops at a local optimum, this goes on to expand the runners-up: a worse output one edit away can
    lead to a better one two edits away. With ``pool=1`` it never steps through a worse output.

    The returned output is the best one found (monotone, as always). One sweep is counted per output whose
    positions have all been tried, so ``budget.max_sweeps`` caps the number of outputs fully expanded.
    """

    def __init__(self, pool: int = 4) -> None:
        if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
            raise ConfigError(f"`strategy_options.pool` has to be an int >= 1, but is {pool!r}")
        self.pool_size = pool

    def start(self, search: Search) -> None:
        self._pool: list[_Node] = [_Node(search.current)]
        self._seen: set[tuple[int, ...]] = {search.current.tokens}

    def step(self, search: Search) -> bool:
        cfg = search.config
        while True:
            node = next((n for n in self._pool if n.queue is None or n.queue), None)
            if node is None:
                return False  # every output in the pool has been fully expanded
            if node.queue is None:
                node.queue = search.sweep_positions(node.hyp)
            block, node.queue = node.queue[: cfg.block_size], node.queue[cfg.block_size :]
            hyp = node.hyp
            proposals = search.propose(hyp, block)
            if not node.queue:
                search.end_sweep()
                if not proposals:
                    return True  # the driver checks max_sweeps before the next step
            if proposals:
                break
        results = search.evaluate(proposals, parent=hyp)
        if results:
            search.accept(*max(results, key=lambda r: r[1].value))
        fresh = {cand.tokens: cand for _, cand in results if cand.tokens not in self._seen}
        self._seen.update(fresh)
        self._pool += [_Node(cand) for cand in fresh.values()]  # positions ranked once a node is expanded
        self._pool.sort(key=lambda n: -n.hyp.value)  # stable: among equals, older outputs first
        del self._pool[self.pool_size :]
        return True
