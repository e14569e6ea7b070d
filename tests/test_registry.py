"""Strategies, moves and terms plug in through registries without touching the core."""

import numpy as np
import pytest

import refine
from refine import STRATEGIES, RefineConfig, Strategy, Term
from refine.api import generate_greedy, refine_tokens
from refine.moves import Move, Proposal
from refine.registry import MOVES, TERMS


@STRATEGIES.register("test_first_position_only")
class FirstPositionOnly(Strategy):
    """Tries only position 0 once: a minimal strategy using the engine's public surface."""

    def step(self, search):
        props = [p for m in search.moves for p in m.propose(search.current, 0, search.move_context)]
        results = search.evaluate(props)
        if results:
            search.accept(*max(results, key=lambda r: r[1].value))
        return False


@MOVES.register("test_swap_adjacent")
class SwapAdjacent(Move):
    def propose(self, hyp, i, ctx):
        y = hyp.tokens
        if i + 1 >= len(y) - 1:
            return []
        return [Proposal(self.name, i, y[:i] + (y[i + 1], y[i]) + y[i + 2:])]


class EndsWithA(Term):
    needs_text = True

    def values(self, views):
        return np.array([float(v.text.endswith("a")) for v in views])


def test_registered_strategy_and_move_run(backend):
    out = generate_greedy(backend, [7, 8], 6)
    res = refine_tokens(backend, [7, 8], out, {"strategy": "test_first_position_only",
                                               "moves": ["test_swap_adjacent", "substitute"], "objective": "sum"})
    assert res.stats.steps == 1
    assert all(e.position == 0 for e in res.edits)


def test_import_path_names_work(backend):
    TERMS.register("test_ends_with_a")(EndsWithA)
    cfg = RefineConfig(strategy="tests.test_registry:FirstPositionOnly",
                       objective={"sum": 1.0, "test_ends_with_a": 0.0})
    assert cfg.objective_fn.needs_text


def test_unknown_import_path_is_config_error():
    with pytest.raises(refine.ConfigError, match="cannot import"):
        RefineConfig(strategy="nowhere.module:Thing")
