"""The degeneration guard: exact counts, the degenerate outputs refinement once accepted, and the guard in the
search (both strategies)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refine import RefineConfig
from refine.api import generate_greedy, refine_tokens
from refine.degeneration import Repeats, count_repeats, repeated_lines, repeated_ngrams

# (the output refinement started from, the output it once accepted), from the downstream and moves benchmarks:
# the 135M model scores each loop as more fluent than the sentence it replaced.
DEGENERATE = [
    ("A cat and a couch are both pets.",
     "A cat is a cat, a couch is a couch, and a pet is a pet is a pet is a pet is a pet is a pet is a"),
    ("A building stands on a climb, a side, and a building are all building.",
     ("A building stands on a climb, a side, a building, a building, a building, a building, a building, a "
      "building, a building, a")),
    (('A surfboard is a type of surfboard that is made of a material called "surfboard" and is designed to '
      "withstand the impact of waves."),
     "Sensory: Surf\nSensory: Ocean\nSensory: Surfer\nSensory: Surf\nSensory: Surfer"),
]


@pytest.mark.parametrize("before, after", DEGENERATE, ids=["pet", "building", "sensory"])
def test_default_guard_refuses_each_quoted_pattern(before, after):
    n = RefineConfig().repeat_guard
    assert n == 3
    assert count_repeats(before, n) == Repeats(0, 0)
    assert count_repeats(after, n).exceeds(count_repeats(before, n))


def test_exact_counts_of_the_quoted_patterns():
    pet, building, sensory = (after for _, after in DEGENERATE)
    # 30 words, 28 trigrams: 11 distinct before "a pet is" starts, then 3 distinct ones repeated
    assert count_repeats(pet) == Repeats(14, 0)
    assert count_repeats(building) == Repeats(11, 0)
    # one trigram ("sensory surf sensory") twice; four of five lines repeat the pattern "sensory _"
    assert count_repeats(sensory) == Repeats(1, 4)


@pytest.mark.parametrize("text, expected", [
    ("a building, a building, a building", Repeats(2, 0)),
    # ordinary prose repeats a trigram now and then ("sat on the"): the guard compares, it does not forbid
    ("The cat sat on the mat. The dog sat on the rug.", Repeats(1, 0)),
    ("one of the best, one of the worst", Repeats(1, 0)),
    ("1. Red\n2. Blue\n3. Green", Repeats(0, 0)),  # a numbered list is not a repeated pattern
    ("- Keep a regular schedule\n- Keep the room dark", Repeats(0, 0)),  # lines that differ before their end
    ("Red\nBlue\nRed", Repeats(0, 1)),  # an identical line
    ("Tip: sleep\n\nTip: rest", Repeats(0, 1)),  # blank lines are skipped
    ("", Repeats(0, 0)),
])
def test_exact_counts(text, expected):
    assert count_repeats(text) == expected


def test_ngram_size_and_exceeds():
    assert repeated_ngrams("a b a b a", 2) == 2 and repeated_ngrams("a b a b a", 3) == 1
    assert repeated_ngrams("a b a b a", 4) == 0
    assert Repeats(1, 0).exceeds(Repeats(0, 3))  # counts are not traded against each other
    assert not Repeats(1, 3).exceeds(Repeats(1, 3))


words = st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=4), min_size=3, max_size=8, unique=True)


@given(words, st.integers(2, 5), st.integers(1, 3))
def test_a_loop_of_m_distinct_words_repeats_k_minus_1_times_m_minus_n_plus_1_ngrams(ws, k, n):
    text = " ".join(ws * k)
    assert repeated_ngrams(text, n) == (k - 1) * len(ws) - n + 1


@given(st.text(max_size=80), st.text(max_size=40))
def test_appending_text_never_removes_a_repeated_ngram(text, more):
    assert repeated_ngrams(text + " " + more) >= repeated_ngrams(text)
    assert repeated_lines(text) >= 0


# ----------------------------------------------------------------------------- in the search

# Char-level bigram model (ids follow char_tokenizer: 1 = <eos>, 3 = 'a', 4 = 'b', 5 = 'c', 6-10 = 'd'-'h',
# 20 = 'r', the prompt, 29 = ' '). Greedy goes 'c' then 'd' at 0.3 again and again, one long word; switching the first letter to 'a' re-decodes to the loop
# "ab ab ab ...", far more likely per token. Neither ends within the cap.
P = 20
LOOP_TABLE = {
    20: {5: 0.5, 3: 0.45},
    **{t: {6: 0.3, **{u: 0.175 for u in range(7, 11)}} for t in range(5, 11)},
    3: {4: 0.9},
    4: {29: 0.9},
    29: {3: 0.9},
}


@pytest.fixture(scope="module")
def loop_backend(tok):
    from refine.backends.hf import HFBackend
    from refine.testing import BigramLM

    return HFBackend(BigramLM(len(tok), LOOP_TABLE, eos_token_id=1), tok)


@pytest.mark.parametrize("strategy", ["coordinate", "best_first"])
def test_the_guard_refuses_a_looping_edit_whatever_its_score(loop_backend, tok, strategy):
    greedy = generate_greedy(loop_backend, [P], 12)
    assert tok.decode(greedy)[0] == "c" and " " not in tok.decode(greedy)
    cfg = {"objective": "mean", "max_new_tokens": 12, "strategy": strategy}
    off = refine_tokens(loop_backend, [P], greedy, {**cfg, "repeat_guard": None})
    assert off.text.startswith("ab ab ab") and off.score > off.initial_score  # the loop does score better
    on = refine_tokens(loop_backend, [P], greedy, cfg)
    assert count_repeats(on.text) == Repeats(0, 0) and not on.text.startswith("ab")
    assert on.stats.refused >= 1 and off.stats.refused == 0


def test_the_guard_reads_the_text_of_every_candidate(loop_backend):
    """Hypotheses carry their text and counts when a guard is on, and none when both are off."""
    from refine.search import Search

    for guard, echo, expect in ((3, 8, Repeats(0, 0)), (None, 8, Repeats(0, 0, 0)), (None, None, None)):
        config = RefineConfig(objective="mean", repeat_guard=guard, echo_guard=echo)
        session = loop_backend.open([P], config.topk_store, config.max_batch_tokens)
        try:
            search = Search(session, loop_backend.tokenizer, config, 12)
            hyp = search.score_initial(generate_greedy(loop_backend, [P], 12))
        finally:
            session.close()
        assert hyp.repeats == expect and (hyp.text is not None) == (expect is not None)
        assert np.isfinite(hyp.value)
