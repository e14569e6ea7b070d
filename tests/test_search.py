"""The engine end to end on tiny models: the greedy-is-wrong case, monotonicity, budgets, determinism, errors."""

import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import refine
from refine import RefineConfig
from refine.api import generate_greedy, refine_tokens
from refine.errors import ConfigError, InputError, RewardError

from .conftest import A, B, S, X


def test_greedy_is_wrong_and_regenerate_fixes_it(bigram_backend):
    greedy = generate_greedy(bigram_backend, [S], 5)
    assert greedy[0] == A and greedy[-1] == 1  # a, then one of the 0.2 tokens, then EOS
    p_greedy = 0.6 * 0.2 * 0.99
    res = refine_tokens(bigram_backend, [S], greedy, {"objective": "sum", "moves": ["regenerate"]})
    assert res.tokens == [B, X, 1]
    assert res.score == pytest.approx(math.log(0.4 * 0.9 * 0.99), abs=1e-4)
    assert res.initial_score == pytest.approx(math.log(p_greedy), abs=1e-4)
    (edit,) = res.edits
    assert edit.move == "regenerate" and edit.position == 0 and edit.new[0] == B
    # a swap with the suffix held fixed cannot find it: p(greedy's 2nd token | b) is tiny
    sub = refine_tokens(bigram_backend, [S], greedy, {"objective": "sum", "moves": ["substitute"]})
    assert sub.tokens[0] == A and not any(e.new[:1] == (B,) for e in sub.edits)


configs = st.fixed_dictionaries({
    "objective": st.sampled_from(["sum", "mean", {"gnmt": {"alpha": 0.8}}, {"mean": 1.0, "repetition": 0.5},
                                  {"sum": 1.0, "length": 0.7}]),
    "moves": st.lists(st.sampled_from(["substitute", "regenerate", "regenerate_beam", "delete", "insert"]),
                      min_size=1, max_size=4, unique=True),
    "regen_beam": st.integers(1, 3),
    "top_k": st.integers(1, 3),
    "positions": st.sampled_from(["margin", "entropy", "left_to_right"]),
    "block_size": st.integers(1, 4),
    "max_positions": st.sampled_from([None, 3]),
    "length": st.sampled_from(["free", "keep_eos"]),
    "regen_extra_tokens": st.integers(0, 4),
    "prune_margin": st.sampled_from([None, 0.0, 0.5]),
    "prune_keep": st.sampled_from([None, 1, 3]),
    "strategy": st.sampled_from(["coordinate", "best_first"]),
})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configs, prompt=st.lists(st.integers(3, 33), min_size=1, max_size=5), n=st.integers(2, 8),
       cap=st.one_of(st.none(), st.integers(40, 400)))
def test_edits_monotone_and_budget_respected(backend, cfg, prompt, n, cap):
    config = RefineConfig(**cfg, max_new_tokens=14, budget={"max_sweeps": 2, "max_forward_tokens": cap})
    out = generate_greedy(backend, prompt, n)
    try:
        res = refine_tokens(backend, prompt, out, config)
    except ConfigError:
        assert cap is not None  # only a cap too small to score the initial output may refuse
        return
    prev = res.initial_score
    for e in res.edits:  # every accepted edit strictly raises the objective, from where the last one left off
        assert e.before == pytest.approx(prev) and e.after > e.before + config.tolerance
        prev = e.after
    assert res.score == pytest.approx(prev) and res.score >= res.initial_score
    if cap is not None:
        assert res.stats.forward_tokens <= cap
    # the reported score is the objective of the returned tokens, re-scored from scratch
    again = refine_tokens(backend, prompt, res.tokens, config.replace(budget={"max_sweeps": 1}, moves=("delete",)))
    assert again.initial_score == pytest.approx(res.score, abs=1e-4)


def test_fixed_length_keeps_length(backend):
    out = generate_greedy(backend, [5, 6], 10)
    res = refine_tokens(backend, [5, 6], out, {"objective": "sum", "length": "fixed", "top_k": 3,
                                                 "max_positions": None})
    assert len(res.tokens) == len(out)
    assert (res.tokens[-1] == 1) == (out[-1] == 1)


def test_keep_eos_never_truncates(bigram_backend):
    res = refine_tokens(bigram_backend, [S], [A, 13, 1], {"objective": "sum", "length": "keep_eos",
                                                           "moves": ["substitute", "regenerate"]})
    assert res.tokens[-1] == 1 and all(1 not in e.new[:-1] for e in res.edits)


def test_deterministic_for_a_seed(backend):
    out = generate_greedy(backend, [7, 8, 9], 12)
    cfg = {"objective": "mean", "moves": ["regenerate", "substitute", "insert"], "seed": 3}
    a = refine_tokens(backend, [7, 8, 9], out, cfg)
    b = refine_tokens(backend, [7, 8, 9], out, cfg)
    assert a.tokens == b.tokens and a.score == b.score and a.stats.forward_tokens == b.stats.forward_tokens


def test_stops_on_budget_and_returns_best_so_far(backend):
    out = generate_greedy(backend, [7, 8, 9], 12)
    free = refine_tokens(backend, [7, 8, 9], out, {"objective": "mean"})
    cap = free.stats.forward_tokens // 2
    res = refine_tokens(backend, [7, 8, 9], out, {"objective": "mean", "budget": {"max_forward_tokens": cap}})
    assert res.stats.forward_tokens <= cap
    assert res.stats.stop_reason in ("max_forward_tokens", "converged")
    assert res.score >= res.initial_score


def test_patience_and_time_limits(backend):
    out = generate_greedy(backend, [7, 8, 9], 12)
    res = refine_tokens(backend, [7, 8, 9], out, {"objective": "sum", "block_size": 1, "budget": {"patience": 1}})
    assert res.stats.stop_reason in ("patience", "converged")
    res = refine_tokens(backend, [7, 8, 9], out, {"objective": "sum", "budget": {"max_seconds": 1e-9}})
    assert res.stats.stop_reason == "max_seconds" and res.tokens == out


def test_time_limit_stops_a_long_decoding_call(backend, monkeypatch):
    """``max_seconds`` bounds one long call too: the HF session stops decoding between two steps once the
    search's deadline passed. Each forward here sleeps 20 ms, so a time limit of 0.3 s allows at most ~15 calls,
    where the first block (60 sampled tokens, one call per token) alone needs 60."""
    import time

    from refine.backends.hf import HFSession

    plain = HFSession._forward
    opened = []

    def slow(self, *args, **kw):
        time.sleep(0.02)
        if self not in opened:
            opened.append(self)
        return plain(self, *args, **kw)

    monkeypatch.setattr(HFSession, "_forward", slow)
    out = generate_greedy(backend, [7, 8, 9], 4)
    cfg = {"objective": "mean", "max_new_tokens": 60, "min_tokens": 1, "strategy": "power_smc",
           "strategy_options": {"particles": 2, "blocks": 1}, "budget": {"max_seconds": 0.3}}
    opened.clear()
    res = refine_tokens(backend, [7, 8, 9], out, cfg)
    assert res.stats.stop_reason == "max_seconds" and res.tokens == out
    assert res.stats.forward_calls < 0.3 / 0.02 + 2
    assert all(s.deadline is None for s in opened)  # the limit belongs to that refinement only


@pytest.mark.parametrize(
    "prompt, output, match",
    [
        ([], [5, 1], "prompt is empty"),
        ([5], [], "output is empty"),
        ([5], [5, 999], "outside the vocabulary"),
        ([-1], [5], "outside the vocabulary"),
        ([5], [5] * 300, "exceed"),
    ],
)
def test_bad_inputs_raise_clear_errors(backend, prompt, output, match):
    before = list(output)
    with pytest.raises(InputError, match=match):
        refine_tokens(backend, prompt, output, {})
    assert output == before


def test_text_api_errors(backend, llama, tok):
    with pytest.raises(InputError, match="prompt is empty"):
        refine.refine("  ", "x", model=llama, tokenizer=tok)
    with pytest.raises(InputError, match="output is empty"):
        refine.refine("hi", "", model=llama, tokenizer=tok)


def test_zero_and_too_small_budgets(backend):
    with pytest.raises(ConfigError, match="max_forward_tokens"):
        refine_tokens(backend, [5], [6, 7, 1], {"budget": {"max_forward_tokens": 0}})
    with pytest.raises(ConfigError, match="cannot even score"):
        refine_tokens(backend, [5], [6, 7, 1], {"budget": {"max_forward_tokens": 2}})


@pytest.mark.parametrize("fn", [lambda t: float("nan"), lambda t: 1 / 0])
def test_bad_reward_stops_with_reward_error(backend, fn):
    with pytest.raises(RewardError):
        refine_tokens(backend, [5], [6, 7, 1], {"reward": fn})


def test_reward_steers_the_output(backend):
    out = generate_greedy(backend, [7, 8, 9], 10)

    def count_e(text):
        return text.count("e")

    base = refine_tokens(backend, [7, 8, 9], out, {"objective": "mean"})
    steered = refine_tokens(backend, [7, 8, 9], out, {"objective": "mean", "reward": count_e, "reward_weight": 5.0,
                                                       "top_k": 5, "moves": ["substitute", "insert"]})
    assert steered.terms["reward"] >= base.terms.get("reward", count_e(base.text))
    assert steered.terms["reward"] > count_e(steered.initial_text)


def test_pruning_saves_compute_without_breaking_exactness(backend):
    out = generate_greedy(backend, [7, 8, 9], 20)
    cfg = {"objective": "mean", "top_k": 3, "max_positions": None, "budget": {"max_sweeps": 1}}
    full = refine_tokens(backend, [7, 8, 9], out, {**cfg, "prune_margin": None})
    pruned = refine_tokens(backend, [7, 8, 9], out, {**cfg, "prune_margin": 0.0})
    assert full.stats.pruned == 0 and pruned.stats.pruned > 0
    assert pruned.stats.forward_tokens < full.stats.forward_tokens
    # whatever was accepted is exactly scored
    check = refine_tokens(backend, [7, 8, 9], pruned.tokens, {**cfg, "moves": ["delete"]})
    assert check.initial_score == pytest.approx(pruned.score, abs=1e-4)


def test_prune_keep_spares_the_best_ranked_suffixes(backend):
    out = generate_greedy(backend, [7, 8, 9], 20)
    cfg = {"objective": "mean", "top_k": 3, "max_positions": None, "budget": {"max_sweeps": 1}}
    full = refine_tokens(backend, [7, 8, 9], out, {**cfg, "prune_margin": None})
    margin = refine_tokens(backend, [7, 8, 9], out, {**cfg, "prune_margin": 0.0})
    kept = refine_tokens(backend, [7, 8, 9], out, {**cfg, "prune_margin": 0.0, "prune_keep": 4})
    everything = refine_tokens(backend, [7, 8, 9], out, {**cfg, "prune_margin": 0.0, "prune_keep": 1000})
    assert margin.stats.pruned > kept.stats.pruned > 0
    assert margin.stats.forward_tokens < kept.stats.forward_tokens < full.stats.forward_tokens
    # keeping more rows than a batch has prunes nothing: the same search as no pruning at all
    assert everything.stats.pruned == 0
    assert everything.tokens == full.tokens and everything.stats.forward_tokens == full.stats.forward_tokens


# Two edits needed, the first one worse: from greedy [a, p] (0.6 * 0.3), switching to 'b' re-decodes to
# [b, d, e] (0.4 * 0.52 * 0.4), and only then switching 'd' to 'c' gives the best output [b, c] (0.4 * 0.48).
# Every other edit of greedy is worse than [b, d, e], so a pool of two holds it.
TWO_STEP_TABLE = {
    S: {A: 0.6, B: 0.4},
    A: {13: 0.3, **{t: 0.7 / 6 for t in range(14, 20)}},
    **{t: {1: 0.99, 25: 0.01} for t in range(13, 20)},
    B: {20: 0.52, 21: 0.48},
    20: {22: 0.4, 23: 0.3, 24: 0.3},
    **{t: {1: 0.99, 25: 0.01} for t in (22, 23, 24)},
    21: {1: 1.0},
}


@pytest.fixture(scope="module")
def two_step_backend(tok):
    from refine.backends.hf import HFBackend
    from refine.testing import BigramLM

    return HFBackend(BigramLM(len(tok), TWO_STEP_TABLE, eos_token_id=1), tok)


def test_best_first_steps_through_a_worse_output(two_step_backend):
    greedy = generate_greedy(two_step_backend, [S], 5)
    assert greedy == [A, 13, 1]
    cfg = {"objective": "sum", "max_positions": None, "budget": {"max_sweeps": 10}}
    coord = refine_tokens(two_step_backend, [S], greedy, cfg)
    assert coord.tokens == greedy and coord.stats.stop_reason == "converged"  # a local optimum
    single = refine_tokens(two_step_backend, [S], greedy, {**cfg, "strategy": "best_first",
                                                           "strategy_options": {"pool": 1}})
    assert single.tokens == greedy
    bf = refine_tokens(two_step_backend, [S], greedy, {**cfg, "strategy": "best_first",
                                                       "strategy_options": {"pool": 2}})
    assert bf.tokens == [B, 21, 1]
    assert bf.score == pytest.approx(math.log(0.4 * 0.48), abs=1e-4)
    assert bf.initial_score == pytest.approx(math.log(0.6 * 0.3 * 0.99), abs=1e-4)
    # the reported edit goes from the returned output's predecessor in the run (greedy) to it
    (edit,) = bf.edits
    assert edit.position == 0 and edit.old == (A, 13) and edit.new == (B, 21)
    assert bf.stats.sweeps >= 2


@pytest.mark.parametrize("pool", [0, -1, 1.5, True, "2"])
def test_best_first_rejects_a_bad_pool(pool):
    with pytest.raises(ConfigError, match="pool"):
        refine.RefineConfig(strategy="best_first", strategy_options={"pool": pool})
    with pytest.raises(ConfigError, match="strategy_options"):
        refine.RefineConfig(strategy="best_first", strategy_options={"width": 2})


def test_best_first_pool_holds_the_best_outputs_seen(backend):
    """After every step the pool is exactly the ``pool`` best distinct outputs evaluated so far."""
    from refine.search import Search
    from refine.strategies import BestFirst

    prompt = [7, 8, 9]
    out = generate_greedy(backend, prompt, 12)
    config = RefineConfig(objective="mean", top_k=3, max_positions=None, block_size=4, prune_margin=None,
                          budget={"max_sweeps": 4})
    session = backend.open(prompt, config.topk_store, config.max_batch_tokens)
    try:
        search = Search(session, backend.tokenizer, config, 20)
        search.score_initial(out)
        seen = {search.current.tokens: search.current.value}
        evaluate = search.evaluate

        def recording(proposals, parent=None):
            results = evaluate(proposals, parent)
            seen.update((h.tokens, h.value) for _, h in results)
            return results

        search.evaluate = recording
        strategy = BestFirst(pool=3)
        strategy.start(search)
        steps = 0
        while strategy.step(search) and steps < 6:
            steps += 1
            best = sorted(seen.values(), reverse=True)[:3]
            assert [n.hyp.value for n in strategy._pool] == pytest.approx(best)
            assert search.current.value == pytest.approx(best[0])
    finally:
        session.close()
    assert steps >= 2 and len(seen) > 6


# Finished stays finished: from 'h' the model says 'a' (0.6), then a spread token (0.2), then EOS; or 'b' (0.4) and
# then 'b' again and again (0.99 each), an answer that never ends. Per token, and even in sum over a short cap, the
# endless one scores better: the case where a finished answer was once replaced by one cut mid-sentence.
ENDLESS_TABLE = {
    S: {A: 0.6, B: 0.4},
    A: {t: 0.2 for t in range(13, 18)},
    **{t: {1: 0.99, 20: 0.01} for t in range(13, 18)},
    B: {B: 0.99},
}


# After 'b' the greedy choice 'c' (0.55) leads into a spread (0.2), the runner-up 'd' (0.45) to 'l' (0.95):
# greedy re-decoding after swapping 'a' for 'b' finds b-c-?, worse than the greedy output; a beam of 2 finds b-d-l.
C, D = 5, 6
BEAM_TABLE = {
    S: {A: 0.6, B: 0.4},
    A: {t: 0.2 for t in range(13, 18)},
    B: {C: 0.55, D: 0.45},
    C: {t: 0.2 for t in range(13, 18)},
    D: {X: 0.95, 13: 0.05},
    **{t: {1: 0.99, 20: 0.01} for t in range(12, 18)},
}


@pytest.fixture(scope="module")
def endless_backend(tok):
    from refine.backends.hf import HFBackend
    from refine.testing import BigramLM

    return HFBackend(BigramLM(len(tok), ENDLESS_TABLE, eos_token_id=1), tok)


@pytest.mark.parametrize("strategy", ["coordinate", "best_first"])
@pytest.mark.parametrize("objective", ["mean", "sum"])
def test_a_finished_answer_is_never_replaced_by_a_cut_one(endless_backend, strategy, objective):
    greedy = generate_greedy(endless_backend, [S], 8)
    assert greedy == [A, 13, 1]
    cfg = {"objective": objective, "max_new_tokens": 8, "strategy": strategy, "max_positions": None}
    res = refine_tokens(endless_backend, [S], greedy, cfg)
    assert res.tokens == greedy and res.initial_ended and res.ended
    assert res.stats.refused >= 1  # the endless 'b...' was evaluated, and refused
    # the same edit from an answer that was itself cut (no EOS): cut against cut, the better score wins
    cut = refine_tokens(endless_backend, [S], [A, 13], cfg)
    assert not cut.initial_ended and not cut.ended
    assert cut.tokens == [B] * 8 and cut.score > cut.initial_score


def test_admissible_rules(endless_backend):
    """What may replace what, whatever the scores: finished stays finished; the guard compares repeat counts."""
    from refine.degeneration import Repeats
    from refine.search import Search
    from refine.types import Hypothesis, Scores

    def hyp(ended, repeats=None):
        return Hypothesis((5, 1) if ended else (5,), Scores.empty(1), 0.0, {}, ended=ended, repeats=repeats)

    session = endless_backend.open([S], 4, 256)
    search = Search(session, endless_backend.tokenizer, RefineConfig(), 8)
    session.close()
    assert search.admissible(hyp(True), hyp(True)) and search.admissible(hyp(True), hyp(False))
    assert search.admissible(hyp(False), hyp(False)) and not search.admissible(hyp(False), hyp(True))
    one, two = Repeats(1, 0), Repeats(2, 0)
    assert search.admissible(hyp(True, one), hyp(True, two)) and search.admissible(hyp(True, one), hyp(True, one))
    assert not search.admissible(hyp(True, two), hyp(True, one))
    assert not search.admissible(hyp(False, one), hyp(True, two))  # unfinished, however clean


@pytest.fixture(scope="module")
def beam_backend(tok):
    from refine.backends.hf import HFBackend
    from refine.testing import BigramLM

    return HFBackend(BigramLM(len(tok), BEAM_TABLE, eos_token_id=1), tok)


@pytest.mark.parametrize("prune_margin", [None, 0.0])
def test_regenerate_beam_finds_a_path_that_pays_early_and_recovers(beam_backend, prune_margin):
    greedy = generate_greedy(beam_backend, [S], 6)
    assert greedy == [A, 13, 1]
    cfg = {"objective": "sum", "max_positions": None, "prune_margin": prune_margin, "budget": {"max_sweeps": 4}}
    plain = refine_tokens(beam_backend, [S], greedy, {**cfg, "moves": ["regenerate"]})
    assert plain.tokens == greedy  # b-c-? scores below the greedy output: rejected
    beam = refine_tokens(beam_backend, [S], greedy, {**cfg, "moves": ["regenerate_beam"], "regen_beam": 2})
    assert beam.tokens == [B, D, X, 1]
    assert beam.score == pytest.approx(math.log(0.4 * 0.45 * 0.95 * 0.99), abs=1e-3)  # the table floors others at 1e-6
    (edit,) = beam.edits
    assert edit.move == "regenerate_beam" and edit.position == 0
    one = refine_tokens(beam_backend, [S], greedy, {**cfg, "moves": ["regenerate_beam"], "regen_beam": 1})
    assert one.tokens == plain.tokens and one.stats.forward_tokens == plain.stats.forward_tokens


@pytest.mark.parametrize("width", [0, -2, 1.5, True])
def test_regen_beam_is_validated(width):
    with pytest.raises(ConfigError, match="regen_beam"):
        RefineConfig(regen_beam=width)


# ---------------------------------------------------------------- one owner for search state


def test_config_is_immutable_and_each_search_builds_its_own_objective_and_strategy(backend):
    import dataclasses

    from refine.backends.base import Session  # noqa: F401  (the interface the search reads)
    from refine.search import Search

    cfg = RefineConfig(objective="sum", strategy_options={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_k = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.budget.max_sweeps = 9
    with pytest.raises(TypeError):
        cfg.strategy_options["pool"] = 2
    assert cfg.replace(top_k=5).top_k == 5 and cfg.top_k == 3
    prompt = [7, 8]
    session = backend.open(prompt, cfg.topk_store, cfg.max_batch_tokens)
    a = Search(session, backend.tokenizer, cfg, 8)
    b = Search(session, backend.tokenizer, cfg, 8)
    assert a.objective is not b.objective and a.strategy is not b.strategy
    assert cfg.build_objective() is not cfg.build_objective()


@pytest.mark.parametrize("strategy", ["coordinate", "best_first"])
@pytest.mark.parametrize("sweeps", [1, 2])
def test_max_sweeps_is_enforced_by_the_driver_alone(bigram_backend, strategy, sweeps):
    out = generate_greedy(bigram_backend, [X], 6)
    res = refine_tokens(bigram_backend, [X], out, {"strategy": strategy, "objective": "sum", "max_positions": 1,
                                                   "block_size": 1, "budget": {"max_sweeps": sweeps}})
    assert res.stats.sweeps <= sweeps
    assert res.stats.stop_reason in ("max_sweeps", "converged")
    if res.stats.stop_reason == "max_sweeps":
        assert res.stats.sweeps == sweeps
    elif strategy == "coordinate":  # converged: its last sweep accepted nothing
        assert res.stats.sweeps < sweeps or not res.edits
    # one step per batched evaluation: every accepted edit's step is one of them
    assert all(1 <= e.step <= res.stats.steps for e in res.edits)


def test_strategies_never_write_search_stats():
    """Only refine.search writes Stats: no strategy module assigns to (or augments) an attribute of ``stats``."""
    import ast
    import pathlib

    import refine.strategies

    folder = pathlib.Path(refine.strategies.__file__).parent
    offenders = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Attribute) and t.value.attr == "stats":
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


def test_a_score_call_that_moves_the_cache_does_not_push_decoding_past_the_cap(backend):
    """Found by the property above: best-first's step scored its substitutions, which re-cached a shorter prefix,
    and its re-decodes then cost more than priced before; the least promising decodes now give way."""
    cfg = RefineConfig(objective="sum", moves=("substitute", "regenerate"), top_k=1, block_size=3, max_positions=None,
                       regen_extra_tokens=1, prune_margin=None, strategy="best_first", max_new_tokens=14,
                       budget={"max_sweeps": 2, "max_forward_tokens": 93})
    prompt = [5, 28, 3]
    res = refine_tokens(backend, prompt, generate_greedy(backend, prompt, 6), cfg)
    assert res.stats.forward_tokens <= 93 and res.stats.stop_reason == "max_forward_tokens"
