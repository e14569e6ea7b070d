"""``RefineConfig.phrases`` (the ``phrase`` move) and the echo guard (``RefineConfig.echo_guard``)."""

import numpy as np
import pytest

from refine.api import refine_tokens
from refine.config import RefineConfig
from refine.degeneration import count_repeats, echoed_ngrams, ngram_set
from refine.errors import ConfigError
from refine.limits import LimitError, RequestLimits
from refine.moves import MoveContext, PhraseMove
from refine.phrases import after_line_start, boundary, encode_phrases, normalise
from refine.types import Hypothesis, Scores

PROMPT = [21, 9, 6, 4]  # "the b" in char ids
EOS = 1


def ids(tok, text):
    return tuple(tok(text, add_special_tokens=False)["input_ids"])


def hyp(tokens):
    n = len(tokens)
    scores = Scores(logprobs=np.zeros(n), topk_ids=np.zeros((n, 1), dtype=np.int64),
                    topk_logprobs=np.zeros((n, 1)), entropy=np.zeros(n))
    return Hypothesis(tokens=tuple(tokens), scores=scores, value=0.0, terms={})


def test_phrases_are_normalised_and_checked():
    assert RefineConfig(phrases="p.s.").phrases == ("p.s.",)
    assert RefineConfig(phrases=["a b", "c"]).to_dict()["phrases"] == ["a b", "c"]
    assert normalise(None) == ()
    for bad in ([""], [" "], [3], 5):
        with pytest.raises(ConfigError, match="phrases"):
            RefineConfig(phrases=bad)
    with pytest.raises(ConfigError, match="twice"):
        RefineConfig(phrases=["x", "x"])
    with pytest.raises(ConfigError, match="fixed"):
        RefineConfig(phrases=["x"], length="fixed")
    with pytest.raises(ConfigError, match="both are empty"):
        RefineConfig(moves=("regenerate", "phrase"))


def test_boundaries():
    assert boundary(".") and boundary("? ") and boundary("\n") and boundary("ok:")
    assert not boundary("a") and not boundary(",") and not boundary(" ")
    assert after_line_start(None) and after_line_start("\n") and after_line_start(" ")
    assert not after_line_start(".")


def test_a_phrase_with_a_banned_token_is_refused(backend):
    view = backend.tokenizer
    (p,) = encode_phrases(view, ["ab"])
    assert p.bare == (3, 4) and p.spaced == (29, 3, 4)
    with pytest.raises(ConfigError, match="may not write"):
        encode_phrases(view, ["ab"], banned=frozenset({4}))
    (only,) = encode_phrases(view, ["ab"], banned=frozenset({29}))  # the space is forbidden: the bare form only
    assert only.bare == only.spaced == (3, 4)
    with pytest.raises(ConfigError, match="may not write"):  # through the search: `forbid` rules the phrase out
        refine_tokens(backend, PROMPT, [5, 30, 1], RefineConfig(phrases=["ab"], forbid=["b"], max_new_tokens=8))


def test_the_move_proposes_at_the_start_sentence_ends_and_the_end(backend, tok):
    ctx = MoveContext(tokenizer=backend.tokenizer, top_k=3, length="free", regen_extra_tokens=2,
                      max_output_tokens=20, phrases=encode_phrases(backend.tokenizer, ["xy"]))
    y = ids(tok, "ab. cd") + (EOS,)  # positions: a b . _ c d <eos>
    assert PhraseMove().propose(hyp(ids(tok, " ab.") + (EOS,)), 0, ctx)[0].tokens == ids(tok, "xy ab.") + (EOS,)
    h = hyp(y)
    move = PhraseMove()
    spots = {i: move.propose(h, i, ctx) for i in range(len(y))}
    assert sorted(i for i, ps in spots.items() if ps) == [0, 3, 6]  # start, after '.', before the final EOS
    xy, sxy = ids(tok, "xy"), ids(tok, " xy")
    inserted = {i: [p.tokens for p in ps if not p.decode] for i, ps in spots.items() if ps}
    assert inserted[0] == []  # bare at the start, but 'xyab' would run together: continued only
    ((cont0,),) = [[p for p in spots[0] if p.decode]]
    assert cont0.tokens == xy and cont0.min_new == 6 // 2  # the rest re-decoded at least half as long as 'ab. cd'
    assert inserted[3] == [y[:3] + sxy + y[3:]]  # spaced after other text
    assert inserted[6] == [y[:6] + sxy + (EOS,)]  # at the end, before EOS
    continued = [p for p in spots[6] if p.decode]
    assert [p.tokens for p in continued] == [y[:6] + sxy] and continued[0].max_new == 1 + 2
    assert continued[0].min_new == 0  # at the end nothing is replaced
    # already written there: not proposed again; no room under the cap: only what fits
    done = hyp(y[:6] + sxy + (EOS,))
    assert not [p for p in move.propose(done, 6, ctx) if p.tokens[:9] == y[:6] + sxy]
    tight = MoveContext(tokenizer=backend.tokenizer, top_k=3, length="free", regen_extra_tokens=2,
                        max_output_tokens=len(y), phrases=ctx.phrases)
    assert move.propose(h, 6, tight) == []
    # an output without EOS: its end is a spot too (after its last token)
    bare = hyp(y[:6])
    assert [p.tokens for p in move.propose(bare, 6, ctx) if not p.decode] == [y[:6] + sxy]
    assert move.propose(bare, 7, ctx) == []


def test_a_phrase_the_top_k_never_proposes_is_written_when_the_objective_pays(backend, tok):
    start = list(ids(tok, "ab.")) + [EOS]
    reward = lambda text: float(text.rstrip().endswith("zq"))  # noqa: E731 - 'zq' is nowhere in the model's top-3
    base = dict(objective="mean", reward=reward, reward_weight=5.0, max_new_tokens=12, budget={"max_sweeps": 1},
                moves=("regenerate", "substitute"))
    without = refine_tokens(backend, PROMPT, start, RefineConfig(**base))
    assert not without.text.rstrip().endswith("zq")
    res = refine_tokens(backend, PROMPT, start, RefineConfig(**base, phrases=["zq"]))
    assert res.text.rstrip().endswith("zq") and res.ended
    assert res.edits[0].move == "phrase" and res.score > res.initial_score


def test_phrase_proposals_are_evaluated_cheapest_first():
    from refine.moves import Proposal
    from refine.strategies.coordinate import cheapest_first

    dec = [Proposal("phrase", i, (i,), decode=True, max_new=m) for i, m in enumerate([9, 2, 5, 2, 7])]
    ins = [Proposal("phrase", 9, (9, 9)), Proposal("phrase", 8, (8, 8))]
    steps = cheapest_first(dec[:3] + ins[:1] + dec[3:] + ins[1:], 2)
    assert [[p.max_new for p in s] for s in steps] == [[0, 0], [2, 2], [5, 7], [9]]
    assert steps[0] == ins and cheapest_first([], 2) == []


def test_a_limit_inside_the_phrase_phase_keeps_its_best_so_far(backend, tok, monkeypatch):
    """The deadline passes while the re-decoded phrase proposals decode: the phrase written in whole (scored in
    the phase's first, cheap step) is still accepted, and its edit recorded."""
    from refine.backends.hf import HFSession
    from refine.errors import DeadlineReached

    start = list(ids(tok, "ab.")) + [EOS]
    reward = lambda text: float(text.rstrip().endswith("zq"))  # noqa: E731
    cfg = RefineConfig(objective="mean", reward=reward, reward_weight=5.0, max_new_tokens=12,
                       budget={"max_sweeps": 1}, moves=("regenerate", "substitute"), phrases=["zq"])
    calls = []

    def deadline(self, requests, *a, **k):
        calls.append(len(requests))
        raise DeadlineReached()

    monkeypatch.setattr(HFSession, "decode", deadline)
    res = refine_tokens(backend, PROMPT, start, cfg)
    assert calls, "the phase reached its re-decoded proposals"
    assert res.stats.stop_reason == "max_seconds"
    assert res.text.rstrip().endswith("zq") and res.ended and res.score > res.initial_score
    assert [e.move for e in res.edits] == ["phrase"] and res.stats.accepted == 1


def test_echo_counts():
    grams = ngram_set("Write a poem. Your answer must contain a title.", 4)
    assert echoed_ngrams("Here: your answer must contain a title.", grams, 4) == 3
    assert echoed_ngrams("A poem about the sea.", grams, 4) == 0
    r = count_repeats("your answer must contain a title", 3, grams, 4)
    assert r.echoed == 3 and r.ngrams == 0
    assert count_repeats("x y z x y z", None, grams, 4).ngrams == 0  # repeat counts off, echo still counted
    assert r.exceeds(count_repeats("a title", 3, grams, 4))


def test_the_echo_guard_refuses_an_edit_that_quotes_the_prompt(backend, tok):
    """Inserting 'e f g h' after 'a b c d.' completes an 8-word span of the prompt, which the reward pays for: the
    guard refuses it (the phrase alone is no echo: it has 4 words), and without the guard it is taken."""
    from refine.degeneration import words

    prompt = list(ids(tok, "say a b c d e f g h now."))
    start = list(ids(tok, "a b c d.")) + [EOS]
    reward = lambda text: float("a b c d e f g h" in " ".join(words(text)))  # noqa: E731 - pays for the quote
    base = dict(objective="mean", reward=reward, reward_weight=5.0, max_new_tokens=24, budget={"max_sweeps": 1},
                phrases=["e f g h"])
    guarded = refine_tokens(backend, prompt, start, RefineConfig(**base))
    assert reward(guarded.text) == 0.0 and guarded.stats.refused > 0
    off = refine_tokens(backend, prompt, start, RefineConfig(**base, echo_guard=None))
    assert reward(off.text) == 1.0 and off.edits[0].move == "phrase"


def test_a_phrase_is_not_an_echo_but_the_rest_of_the_prompt_is(backend, tok):
    from refine.search import Search

    prompt = list(ids(tok, "say a b c d e f g h now and then i j k l m n o p."))
    for phrases, echoed in (((), 1), (("a b c d e f g h",), 0)):
        config = RefineConfig(objective="mean", phrases=phrases, max_new_tokens=40)
        session = backend.open(prompt, config.topk_store, config.max_batch_tokens)
        try:
            search = Search(session, backend.tokenizer, config, 40)
            h = search.score_initial(list(ids(tok, "a b c d e f g h.")) + [EOS])
            other = search.score_initial(list(ids(tok, "i j k l m n o p.")) + [EOS])
        finally:
            session.close()
        assert h.repeats.echoed == echoed and other.repeats.echoed == 1


def test_a_server_caps_phrases():
    limits = RequestLimits()
    limits.check_refine(RefineConfig(max_new_tokens=32, phrases=["P.S."]))
    with pytest.raises(LimitError, match="phrases"):
        limits.check_refine(RefineConfig(max_new_tokens=32, phrases=[f"p{i}" for i in range(limits.PHRASES + 1)]))
    with pytest.raises(LimitError, match="characters"):
        limits.check_refine(RefineConfig(max_new_tokens=32, phrases=["x" * (limits.PHRASE_CHARS + 1)]))


def test_cli_phrase_and_echo_guard(model_dir, capsys):
    import json

    from refine.cli import main

    args = ["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "10", "--max-sweeps", "1",
            "--objective", "mean", "--json", "--phrase", "zq", "--echo-guard", "0"]
    assert main(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["phrases"] == ["zq"] and d["config"]["echo_guard"] is None
