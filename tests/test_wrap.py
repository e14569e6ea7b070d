"""``RefineConfig.wrap``: text put around the whole output in one edit, and the rule that keeps the answer inside.

The tiny model's alphabet has no quotation mark, so ``!`` stands in for one.
"""

import pytest

from refine.api import refine_tokens
from refine.config import RefineConfig
from refine.errors import ConfigError
from refine.limits import LimitError, RequestLimits
from refine.moves import MoveContext, PhraseMove
from refine.phrases import normalise_wraps, sentence_cuts, unwrap, unwrapped_length, wrapped
from refine.search import Search

from .test_phrases import EOS, PROMPT, hyp, ids


def quoted(text: str) -> float:
    """Pays only for both marks: one alone is worth nothing, as in 'wrap your answer in quotation marks'."""
    t = text.strip()
    return float(len(t) > 1 and t[0] == "!" and t[-1] == "!")


def test_wraps_are_normalised_and_checked():
    assert RefineConfig(wrap=[["!", "!"]]).wrap == (("!", "!"),)
    assert RefineConfig(wrap=[("q ", "")]).to_dict()["wrap"] == [["q ", ""]]
    assert normalise_wraps(None) == ()
    for bad in ("!", ["!"], [["!"]], [[1, 2]], [["", " "]], 5, [["a", "b", "c"]], [{"a": 1, "b": 2}], {"a": "b"}):
        with pytest.raises(ConfigError, match="wrap"):
            RefineConfig(wrap=bad)
    with pytest.raises(ConfigError, match="twice"):
        RefineConfig(wrap=[["a", "b"], ("a", "b")])
    with pytest.raises(ConfigError, match="fixed"):
        RefineConfig(wrap=[["a", "b"]], length="fixed")
    RefineConfig(moves=("regenerate", "phrase"), wrap=[["a", ""]])  # the phrase move has something to write
    with pytest.raises(ConfigError, match="both are empty"):
        RefineConfig(moves=("regenerate", "phrase"))
    assert RefineConfig.from_dict({"wrap": [["!", "!"]]}, plugins=[]).wrap == (("!", "!"),)


def test_wrapped_reads_the_text_outer_whitespace_ignored():
    assert wrapped(' "hi" ', '"', '"') and not wrapped('"hi', '"', '"') and not wrapped('"', '"', '"')
    assert unwrapped_length(' "hi there" ', [('"', '"')]) == 8
    assert unwrapped_length("Write it.\n\n answer", [("Write it.\n\n", "")]) == 6
    assert unwrapped_length("answer", [('"', '"')]) is None
    assert wrapped("WRITE it.\n\nok", "Write it.\n\n", "")  # case aside, the request is restated
    assert unwrap("STRASSE ist gut", [("Straße ", "")]) is None  # casefolding changes the length: no wrap
    assert unwrap("WRITE it.\n\nok", [("Write it.\n\n", "")]) == "ok"


def test_sentence_cuts_are_distinct_and_inside_the_text():
    assert sentence_cuts("One. Two! Three") == [9, 4]
    assert sentence_cuts("a.\n\nb.\n\nc") == [6, 2]  # a run of line breaks is one cut
    assert sentence_cuts("\nOne. Two.\n") == [5]  # neither at the start nor at the end
    assert sentence_cuts("no end") == []


def test_the_move_wraps_the_whole_output_once_at_the_start(backend, tok):
    ctx = MoveContext(tokenizer=backend.tokenizer, top_k=3, length="free", regen_extra_tokens=2,
                      max_output_tokens=20, wraps=(("!", "!"), ("zq ", "")))
    y = ids(tok, "ab. cd") + (EOS,)
    move = PhraseMove()
    props = move.propose(hyp(y), 0, ctx)
    assert [p.tokens for p in props] == [ids(tok, "!ab. cd!") + (EOS,), ids(tok, "zq ab. cd") + (EOS,)]
    assert all(p.position == 0 and not p.decode for p in props)
    assert all(not move.propose(hyp(y), i, ctx) for i in range(1, len(y)))  # no phrases: nothing elsewhere
    # already wrapped (in either pair): not proposed again
    assert [p.tokens for p in move.propose(hyp(ids(tok, "!ab!") + (EOS,)), 0, ctx)] == [ids(tok, "zq !ab!") + (EOS,)]
    # an unfinished output stays unfinished; no room under the cap: nothing
    assert move.propose(hyp(y[:-1]), 0, ctx)[0].tokens == ids(tok, "!ab. cd!")
    tight = MoveContext(tokenizer=backend.tokenizer, top_k=3, length="free", regen_extra_tokens=2,
                        max_output_tokens=len(y) + 1, wraps=ctx.wraps)
    assert move.propose(hyp(y), 0, tight) == []
    # cut by the cap (no EOS) with no room for the wrap: closed at the last sentence end that leaves room, ended
    cut = ids(tok, "ab. cd. ef")
    room = MoveContext(tokenizer=backend.tokenizer, top_k=3, length="free", regen_extra_tokens=2,
                       max_output_tokens=len(cut) + 1, wraps=(("!", "!"),))
    assert [p.tokens for p in move.propose(hyp(cut), 0, room)] == [ids(tok, "!ab. cd.!") + (EOS,)]
    # a banned token in the wrapped text: not proposed
    banned = MoveContext(tokenizer=backend.tokenizer, top_k=3, length="free", regen_extra_tokens=2,
                         max_output_tokens=20, wraps=(("!", "!"),), forbidden=frozenset(ids(tok, "!")))
    assert move.propose(hyp(y), 0, banned) == []


def test_a_wrap_no_single_edit_reaches_is_written_when_the_objective_pays(backend, tok):
    start = list(ids(tok, "ab.")) + [EOS]
    base = dict(objective="mean", reward=quoted, reward_weight=5.0, max_new_tokens=12, budget={"max_sweeps": 2},
                moves=("regenerate", "substitute", "insert"), phrases=["!"])
    without = refine_tokens(backend, PROMPT, start, RefineConfig(**base))
    assert quoted(without.text) == 0.0  # one mark at a time is never paid for
    res = refine_tokens(backend, PROMPT, start, RefineConfig(**base, wrap=[["!", "!"]]))
    assert quoted(res.text) == 1.0 and res.ended and res.score > res.initial_score
    assert res.edits[0].move == "phrase" and res.edits[0].position == 0


def test_a_wrapped_candidate_keeps_half_of_the_answer(backend, tok):
    config = RefineConfig(objective="mean", wrap=[["zq ", ""]], max_new_tokens=40)
    session = backend.open(PROMPT, config.topk_store, config.max_batch_tokens)
    try:
        search = Search(session, backend.tokenizer, config, 40)
        start = search.score_initial(list(ids(tok, "abcdefgh.")) + [EOS])  # 9 characters: 4 must stay inside

        def cand(text):
            ((_, sc),) = session.score([ids(tok, text) + (EOS,)])
            (h,) = search._hypotheses([(ids(tok, text) + (EOS,), sc)])
            return h

        assert search.admissible(cand("zq abcdefgh."), start)
        assert search.admissible(cand("zq abcd"), start)
        assert not search.admissible(cand("zq abc"), start)  # the request restated, the answer cut away
        assert not search.admissible(cand("zq "), start)
        assert search.admissible(cand("ab"), start)  # not wrapped: the rule does not apply (the objective decides)
    finally:
        session.close()


def test_refinement_never_trades_the_answer_for_the_wrap(backend, tok):
    """Summed log P pays for every token cut, and the reward only for the restated request: without the rule the
    answer would go; with it at least half stays."""
    start = list(ids(tok, "ab cd ef gh ij.")) + [EOS]
    reward = lambda text: float(text.startswith("zq "))  # noqa: E731
    cfg = RefineConfig(objective="sum", reward=reward, reward_weight=50.0, max_new_tokens=30, wrap=[["zq ", ""]],
                       moves=("substitute", "delete"), top_k=16, max_positions=None, budget={"max_sweeps": 3},
                       repeat_guard=None)
    res = refine_tokens(backend, PROMPT, start, cfg)
    assert res.text.startswith("zq ") and res.ended and res.score > res.initial_score
    assert unwrapped_length(res.text, cfg.wrap) >= len("ab cd ef gh ij.") // 2
    assert len(res.text) < len("zq ab cd ef gh ij.")  # the objective did cut what the rule allows


def test_a_server_caps_wraps():
    limits = RequestLimits()
    limits.check_refine(RefineConfig(max_new_tokens=32, wrap=[['"', '"']]))
    with pytest.raises(LimitError, match="wrap"):
        limits.check_refine(RefineConfig(max_new_tokens=32, wrap=[[f"p{i}", ""] for i in range(limits.WRAPS + 1)]))
    with pytest.raises(LimitError, match="characters"):
        limits.check_refine(RefineConfig(max_new_tokens=32, wrap=[["x" * limits.WRAP_CHARS, "y"]]))


def test_cli_wrap(model_dir, capsys):
    import json

    from refine.cli import main

    args = ["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "10", "--max-sweeps", "1",
            "--objective", "mean", "--json", "--wrap", "!", "!", "--wrap", "zq ", ""]
    assert main(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["wrap"] == [["!", "!"], ["zq ", ""]]


def repeats_of(backend, tok, prompt, config, texts):
    """How repetitive the guards find each text (each scored as a finished initial output)."""
    session = backend.open(prompt, config.topk_store, config.max_batch_tokens)
    try:
        search = Search(session, backend.tokenizer, config, 60)
        return {k: search.score_initial(list(ids(tok, t)) + [EOS]).repeats for k, t in texts.items()}
    finally:
        session.close()


def test_the_guards_read_the_answer_inside_the_wrap(backend, tok):
    """A restated request that shares words with its answer is not a loop; the same words unwrapped are."""
    texts = {"wrapped": "ab cd ef ab cd ef gh", "loop": "gh ab cd ef ab cd ef"}
    for wrap, expect in (([["ab cd ef ", ""]], {"wrapped": 0, "loop": 1}), ((), {"wrapped": 1, "loop": 1})):
        config = RefineConfig(objective="mean", wrap=wrap, repeat_guard=3, max_new_tokens=60)
        got = {k: r.ngrams for k, r in repeats_of(backend, tok, PROMPT, config, texts).items()}
        assert got == expect, (wrap, got)


def test_an_answer_inside_the_wrap_that_copies_the_prompt_is_an_echo(backend, tok):
    """The guard reads the answer inside the wrap against the whole prompt: the request restated as the wrap is
    asked for, the same words again as the answer are an echo."""
    prompt = list(ids(tok, "say a b c d e f g h now."))
    config = RefineConfig(objective="mean", wrap=[["a b c d e f g h ", ""]], max_new_tokens=60)
    got = repeats_of(backend, tok, prompt, config, {"answer": "a b c d e f g h ij kl.",
                                                    "copied": "a b c d e f g h a b c d e f g h."})
    assert got["answer"].echoed == 0 and got["copied"].echoed > 0
