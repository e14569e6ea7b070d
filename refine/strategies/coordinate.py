"""Coordinate descent over token positions: the default strategy."""

from __future__ import annotations

from ..types import Hypothesis
from ..moves import Proposal
from ..search import Search
from ..strategy import STRATEGIES, Strategy


def cheapest_first(proposals: list[Proposal], size: int) -> list[list[Proposal]]:
    """``proposals`` split into steps by cost: the scored ones (nothing to decode) together first, then the
    re-decoded ones by how many tokens they may decode, ``size`` at a time."""
    scored = [p for p in proposals if not p.decode]
    decoded = sorted((p for p in proposals if p.decode), key=lambda p: p.max_new)  # stable: ties keep order
    steps = [scored] if scored else []
    return steps + [decoded[i : i + size] for i in range(0, len(decoded), size)]


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

    With ``RefineConfig.phrases`` (or ``wrap``) each sweep opens with the ``phrase`` move's proposals at every spot
    where a phrase may go (the start, sentence and line ends, the end; wraps around the whole output): where a
    phrase fits is not where the model is least confident, so these spots are not left to the position order.
    They are evaluated cheapest first, in steps of their own (the phrases written in with the rest kept, then the
    re-decoded ones by how much they re-decode, ``block_size`` at a time), and the best of them all is accepted
    after the last. The phase is anytime: when a limit stops the search in the middle of it, the best phrase
    candidate found so far is still accepted if it improves the output (a time budget shorter than re-decoding
    after every spot would otherwise keep none).
    """

    def start(self, search: Search) -> None:
        self._queue: list[int] = []
        self._improved = False
        self._new_sweep(search)

    def _new_sweep(self, search: Search) -> None:
        self._queue = search.sweep_positions(search.current)
        self._improved = False
        # the sweep's phrase phase (none without phrases), proposed from the output the sweep starts from
        self._phrase_steps = cheapest_first(search.propose_phrases(search.current), search.config.block_size)
        self._phrase_best: tuple[Proposal, Hypothesis] | None = None

    def step(self, search: Search) -> bool:
        cfg = search.config
        if self._phrase_steps:
            self._phrase_step(search)
            return True
        while True:
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

    def _phrase_step(self, search: Search) -> None:
        """Evaluate the next step of the sweep's phrase proposals (all from the same output); after the last,
        accept the best of them."""
        results = search.evaluate(self._phrase_steps.pop(0))
        if results:
            prop, best = max(results, key=lambda r: r[1].value)
            if self._phrase_best is None or best.value > self._phrase_best[1].value:
                self._phrase_best = (prop, best)
        if not self._phrase_steps:
            self._settle_phrases(search)

    def _settle_phrases(self, search: Search) -> None:
        if self._phrase_best is not None and search.accept(*self._phrase_best):
            self._improved = True
        self._phrase_best = None

    def result(self, search: Search) -> Hypothesis:
        # a limit stopped the search inside the phrase phase: its best candidate so far is kept if it improves
        self._phrase_steps = []
        self._settle_phrases(search)
        return search.best()

    @staticmethod
    def _holds_forbidden(search: Search, i: int) -> bool:
        tokens = search.current.tokens
        return i < len(tokens) and tokens[i] in search.forbidden
