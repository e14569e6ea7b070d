"""Strategies, moves and terms plug in through registries without touching the core."""

import numpy as np
import pytest

import refine
from refine import STRATEGIES, RefineConfig, Strategy, Term
from refine.api import generate_greedy, refine_tokens
from refine.moves import Move, Proposal
from refine import MOVES, TERMS


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


# --------------------------------------------------------------------------- import paths: trusted callers only

PLUGIN = "tests.plugin_strategy:FirstPosition"


def _code_options(marker):
    """Option sets that, if their import paths were resolved and called, would run a shell command."""
    cmd = {"command": f"touch {marker}"}
    return [
        {"strategy": "os:system", "strategy_options": cmd},
        {"strategy": "os:abort"},
        {"moves": ["regenerate", "os:system"]},
        {"moves": "os:system"},
        {"objective": "os:system"},
        {"objective": {"mean": 1.0, "os:system": cmd}},
        {"strategy": "subprocess:Popen", "strategy_options": {"args": ["touch", str(marker)]}},
    ]


def test_untrusted_options_cannot_name_import_paths(tmp_path):
    marker = tmp_path / "marker"
    for options in _code_options(marker):
        with pytest.raises(refine.ConfigError, match="import path, which is not accepted"):
            RefineConfig.from_dict(options, plugins=[])
    assert not marker.exists()


def test_untrusted_import_path_is_refused_before_its_module_is_imported(tmp_path, monkeypatch):
    (tmp_path / "refine_side_effect_mod.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\nclass S: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(refine.ConfigError, match="not accepted"):
        RefineConfig.from_dict({"strategy": "refine_side_effect_mod:S"}, plugins=[PLUGIN])
    assert not (tmp_path / "imported").exists()


def test_allowed_plugin_works_and_others_are_still_refused(backend):
    cfg = RefineConfig.from_dict({"strategy": PLUGIN, "objective": "sum"}, plugins=[PLUGIN])
    res = refine_tokens(backend, [7, 8], generate_greedy(backend, [7, 8], 6), cfg)
    assert res.stats.steps == 1 and all(e.position == 0 for e in res.edits)
    with pytest.raises(refine.ConfigError, match="allowed plug-in"):
        RefineConfig.from_dict({"strategy": "tests.plugin_strategy:NotAllowed"}, plugins=[PLUGIN])
    assert RefineConfig.from_dict({"strategy": "best_first"}, plugins=[]).strategy == "best_first"


def test_even_trusted_import_paths_must_name_the_right_kind_of_class(tmp_path):
    """A path is checked against the registry's base class before it is called: os.system is no Strategy."""
    marker = tmp_path / "marker"
    for options in _code_options(marker):
        if options.get("strategy") == "os:abort":
            continue  # trusted code may import os; checked below without calling abort
        with pytest.raises(refine.ConfigError, match="is not a|subclass"):
            RefineConfig.from_dict(options)
    with pytest.raises(refine.ConfigError, match="subclass of refine.strategy.Strategy"):
        RefineConfig(strategy="os:abort")
    assert not marker.exists()
    with pytest.raises(TypeError):
        refine.STRATEGIES.register("test_not_a_strategy")(dict)


def test_plugin_paths_lists_the_import_paths_options_name():
    from refine.config import plugin_paths

    assert plugin_paths({"strategy": PLUGIN, "moves": ["regenerate", "a.b:M"],
                         "objective": {"mean": 1, "c:T": {"weight": 2}}}) == {PLUGIN, "a.b:M", "c:T"}
    assert plugin_paths({"objective": "x.y:Z"}) == {"x.y:Z"}
    assert plugin_paths(None) == set() and plugin_paths({"strategy": "coordinate"}) == set()
