"""Coordinate descent over token positions: the default strategy."""

from __future__ import annotations

from ..search import Search
from ..strategy import STRATEGIES, Strategy


@STRATEGIES.register("coordinate")
class CoordinateDescent(Strategy):
    """Visit positions in ``config.positions`` order, ``block_size`` at a time.

    Each step proposes every configured move at every position of the block, evaluates all proposals in
    one batched call (re-decoded suffixes of the whole block decode together) and accepts the best one if it
    improves the objective. A sweep ends when the queue of positions is empty; a sweep without an accepted
    edit means a local optimum (converged). Monotone: the objective never decreases.

    A position that holds a forbidden token (``RefineConfig.forbid``; such positions come first in a sweep)
    is a block of its own: its few proposals decode in a small batch, so the edit the constraint needs is
    tried early and cheaply (a block of long re-decodes can take longer than a time budget allows).

    With ``RefineConfig.phrases`` each sweep opens with one block of the ``phrase`` move's proposals at every
    spot where a phrase may go (the start, sentence and line ends, the end): where a phrase fits is not where
    the model is least confident, so these spots are not left to the position order.
    """

    def start(self, search: Search) -> None:
        self._queue: list[int] = []
        self._improved = False
        self._new_sweep(search)

    def _new_sweep(self, search: Search) -> None:
        self._queue = search.sweep_positions(search.current)
        self._improved = False
        self._phrases_due = search.phrase_move is not None

    def step(self, search: Search) -> bool:
        cfg = search.config
        while True:
            if self._phrases_due:
                self._phrases_due = False
                proposals = search.propose_phrases(search.current)
                if proposals:
                    break
                continue
            if not self._queue:
                # sweep finished: converged without an accepted edit; else the driver decides whether another runs
                search.end_sweep()
                if not self._improved:
                    return False
                self._new_sweep(search)
                return True
            size = 1 if self._holds_forbidden(search, self._queue[0]) else cfg.block_size
            block, self._queue = self._queue[:size], self._queue[size:]
            proposals = search.propose(search.current, block)
            if proposals:
                break
        results = search.evaluate(proposals)
        if results:
            prop, best = max(results, key=lambda r: r[1].value)
            if search.accept(prop, best):
                self._improved = True
        return True

    @staticmethod
    def _holds_forbidden(search: Search, i: int) -> bool:
        tokens = search.current.tokens
        return i < len(tokens) and tokens[i] in search.forbidden
