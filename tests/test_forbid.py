"""``RefineConfig.forbid``: forbidden tokens are never proposed nor decoded, and nothing else changes."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from refine.api import refine_tokens
from refine.backends.base import DecodeRequest
from refine.cli import main
from refine.config import RefineConfig
from refine.errors import ConfigError, InputError
from refine.forbid import forbidden_ids, positions_first
from refine.limits import RequestLimits

PROMPT = [21, 9, 6, 4]  # "the b" in char ids
A, E, COMMA = 3, 7, 31  # 'a', 'e', ',' in char_tokenizer ids


def vowels(text: str) -> bool:
    return any(c in "aeiou" for c in text)


def full_logits(model, prompt, seq):
    ids = torch.tensor([list(prompt) + list(seq)])
    with torch.no_grad():
        return model(ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(seq)].float()


def test_forbidden_ids_from_strings_and_predicates(backend):
    view = backend.tokenizer
    assert forbidden_ids(view, ("a", ",")) == {A, COMMA}
    assert forbidden_ids(view, vowels) == {3, 7, 11, 17, 23}
    assert forbidden_ids(view, ()) == frozenset()
    # a rule sees the text of every other token: here all but '?' (EOS and the specials are not its to forbid)
    assert forbidden_ids(view, lambda t: t != "?") == set(range(3, 33))
    with pytest.raises(ConfigError, match="every token"):
        forbidden_ids(view, lambda t: True)
    with pytest.raises(ConfigError, match="raised ZeroDivisionError"):
        forbidden_ids(view, lambda t: 1 / 0)


@pytest.mark.parametrize("bad", [[""], [3], "", 5])
def test_bad_forbid_values_are_refused(bad):
    if bad == "":
        with pytest.raises(ConfigError):
            RefineConfig(forbid=bad)
        return
    with pytest.raises(ConfigError, match="forbid"):
        RefineConfig(forbid=bad)


def test_forbid_is_normalised_and_described():
    assert RefineConfig(forbid=",").forbid == (",",)
    assert RefineConfig(forbid=[",", "x"]).to_dict()["forbid"] == [",", "x"]
    assert RefineConfig(forbid=vowels).to_dict()["forbid"] == "vowels"
    assert RefineConfig().forbid == ()


def test_greedy_decoding_equals_generate_with_the_tokens_suppressed(llama, backend):
    session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    banned = forbidden_ids(backend.tokenizer, vowels) | {COMMA}
    session.banned = banned
    reqs = [DecodeRequest((5,), 10), DecodeRequest((), 8), DecodeRequest((5, 6), 6, min_new=6)]
    for req, (start, dec) in zip(reqs, session.decode(reqs)):
        ids = torch.tensor([PROMPT + list(req.tokens)])
        ref = llama.generate(ids, max_new_tokens=req.max_new, min_new_tokens=req.min_new or None, do_sample=False,
                             suppress_tokens=sorted(banned))[0, len(PROMPT):].tolist()
        assert list(dec.tokens) == ref
        assert not set(dec.tokens[len(req.tokens):]) & banned
        # the scores are the model's own, and the top-k alternatives reported are allowed ones
        logits = full_logits(llama, PROMPT, dec.tokens).log_softmax(-1)
        np.testing.assert_allclose(dec.scores.logprobs,
                                   [float(logits[t, x]) for t, x in enumerate(dec.tokens)][start:], atol=1e-4)
        assert not set(dec.scores.topk_ids.ravel().tolist()) & banned


def test_a_forbidden_target_still_scores_as_the_model_says(llama, backend):
    session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    session.banned = frozenset({A, E})
    seq = (A, 5, E, 6, A)
    ((start, sc),) = session.score([seq])
    logits = full_logits(llama, PROMPT, seq).log_softmax(-1)
    np.testing.assert_allclose(sc.logprobs, [float(logits[t, x]) for t, x in enumerate(seq)][start:], atol=1e-4)
    assert not set(sc.topk_ids.ravel().tolist()) & {A, E}


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampling_renormalises_over_the_allowed_tokens(llama, backend, temperature):
    session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    banned = forbidden_ids(backend.tokenizer, vowels)
    session.banned = banned
    reqs = [DecodeRequest((5,), 10, temperature=temperature, seed=s) for s in range(5)]
    for _, dec in session.decode(reqs):
        gen = dec.tokens[1:]
        assert not set(gen) & banned
        logits = full_logits(llama, PROMPT, dec.tokens)
        logits[:, sorted(banned)] = -float("inf")
        q = torch.log_softmax(logits.double() / temperature, -1)
        np.testing.assert_allclose(dec.sample_logprobs, [float(q[1 + j, t]) for j, t in enumerate(gen)], atol=1e-4)


def test_beams_never_hold_a_forbidden_token(backend):
    session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    plain = session.decode([DecodeRequest((5,), 8, beam=3)])[0][1].tokens
    session.banned = frozenset(plain[1:]) - {1}  # everything the unconstrained beam wrote
    ((_, dec),) = session.decode([DecodeRequest((5,), 8, beam=3)])
    assert not set(dec.tokens[1:]) & session.banned


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_walk_along_a_base_that_holds_a_forbidden_token_leaves_it_there(backend, temperature):
    """With the walk on or off, the same draws: the walk stops where the base has a token the row cannot draw."""
    req = DecodeRequest((5,), 12, temperature=temperature, seed=3 if temperature else None)
    free = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    ((_, unconstrained),) = free.decode([req])
    base = unconstrained.tokens
    banned = frozenset({base[4]}) - {1}
    outs = []
    for window in (256, 0):
        s = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
        s.walk_window = window
        s.banned = banned
        outs.append(s.decode([req], base)[0])
    (s1, d1), (s2, d2) = outs
    assert d1.tokens == d2.tokens and not set(d1.tokens[1:]) & banned
    assert d1.tokens[:4] == base[:4]  # the walk follows the base up to the forbidden token
    if temperature:
        np.testing.assert_allclose(d1.sample_logprobs, d2.sample_logprobs, atol=1e-6)


def count(tokens, banned):
    return sum(t in banned for t in tokens)


@settings(max_examples=8, deadline=None)
@given(words=st.lists(st.sampled_from(["a", "e", "t", " ", "o", "s"]), min_size=1, max_size=2, unique=True),
       moves=st.sampled_from([("regenerate",), ("substitute", "insert"), ("regenerate", "substitute")]))
def test_no_accepted_edit_writes_a_forbidden_token(backend, words, moves):
    banned = forbidden_ids(backend.tokenizer, tuple(words))
    start = [5, 3, 7, 6, 29, 20, 15, 30]  # "caed rm." at the length cap (the tiny model rarely ends)
    cfg = RefineConfig(forbid=tuple(words), moves=moves, objective="mean", max_new_tokens=8, repeat_guard=None,
                       reward=lambda text: -sum(text.count(w) for w in words), reward_weight=3.0,
                       budget={"max_sweeps": 2})
    res = refine_tokens(backend, PROMPT, start, cfg)
    for e in res.edits:
        assert not set(e.new) & banned, (e, words)
    assert count(res.tokens, banned) <= count(start, banned)


def test_positions_holding_a_forbidden_token_come_first_and_a_reward_clears_them(backend):
    start = [5, 3, 7, 6, 29, 20, 15, 30]
    banned = forbidden_ids(backend.tokenizer, ("a", "e"))
    assert positions_first(start, [7, 6, 5, 4, 3, 2, 1, 0], banned)[:2] == [1, 2]
    # one position a sweep: the first forbidden token's, whatever the margin order says
    cfg = RefineConfig(forbid=("a", "e"), objective="mean", max_new_tokens=8, repeat_guard=None,
                       reward=lambda text: -(text.count("a") + text.count("e")), reward_weight=5.0,
                       max_positions=1, block_size=1, budget={"max_sweeps": 1})
    res = refine_tokens(backend, PROMPT, start, cfg)
    assert count(res.tokens, banned) == 0 and [e.position for e in res.edits] == [1]


def test_a_backend_that_cannot_mask_is_refused(backend, monkeypatch):
    from refine.backends.base import Session
    from refine.backends.hf import HFSession

    assert Session.supports_banned is False  # a backend declares the capability; none is assumed

    monkeypatch.setattr(HFSession, "supports_banned", False)
    with pytest.raises(InputError, match="forbid"):
        refine_tokens(backend, PROMPT, [5, 3, 1], RefineConfig(forbid=("a",), max_new_tokens=8))
    refine_tokens(backend, PROMPT, [5, 3, 1], RefineConfig(max_new_tokens=8, budget={"max_sweeps": 1}))


def test_a_server_refuses_forbid():
    limits = RequestLimits()
    with pytest.raises(ConfigError, match="forbid"):
        limits.check_refine(RefineConfig(max_new_tokens=32, forbid=(",",)))
    limits.check_refine(RefineConfig(max_new_tokens=32))


def test_cli_forbid(model_dir, capsys):
    args = ["run", "the cat", "--model", str(model_dir), "--no-chat", "--max-new-tokens", "10", "--max-sweeps", "1",
            "--objective", "mean", "--json"]
    assert main([*args, "--forbid", "a", "--forbid", ","]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["forbid"] == ["a", ","]
    assert "a" not in d["initial_text"] and "," not in d["initial_text"]  # its own start is decoded masked
    for e in d["edits"]:
        assert A not in e["new"] and COMMA not in e["new"]


def test_a_forbidden_position_is_a_block_of_its_own(backend):
    """Coordinate descent tries the first forbidden token's position alone (a small batch), then blocks as usual."""
    from refine.search import Search

    start = [5, 3, 7, 6, 29, 20, 15, 30]
    steps = {}
    for forbid in ((), ("a",)):
        cfg = RefineConfig(forbid=forbid, objective="mean", max_new_tokens=8, repeat_guard=None, top_k=3,
                           block_size=8, max_positions=8, budget={"max_sweeps": 1})
        search = Search(backend.open(PROMPT, topk=cfg.topk_store, max_batch_tokens=4096), backend.tokenizer, cfg, 8)
        search.score_initial(start)
        search.strategy.start(search)
        search.strategy.step(search)
        steps[forbid] = search.stats.candidates
    assert steps[("a",)] == 3 and steps[()] > 3 * 4  # one position's top-3, against a block of 8 positions


def test_the_answer_refine_decodes_itself_keeps_the_rule(llama, backend, tok):
    """With no output given, refine's own greedy start is decoded under the mask: it equals generate with the
    forbidden ids suppressed, and neither it nor the refined output holds one."""
    import refine

    banned = forbidden_ids(backend.tokenizer, ("e", ","))
    ref = llama.generate(torch.tensor([PROMPT]), max_new_tokens=10, do_sample=False,
                         suppress_tokens=sorted(banned))[0, len(PROMPT):].tolist()
    plain = llama.generate(torch.tensor([PROMPT]), max_new_tokens=10, do_sample=False)[0, len(PROMPT):].tolist()
    assert set(plain) & banned  # the unmasked greedy answer would hold one: the mask is what keeps it out
    res = refine.refine(PROMPT, model=backend, max_new_tokens=10, forbid=("e", ","), objective="mean",
                        budget={"max_sweeps": 1})
    assert res.initial_tokens == ref[: ref.index(1) + 1] if 1 in ref else res.initial_tokens == ref
    assert not set(res.initial_tokens) & banned and not set(res.tokens) & banned


def test_generate_greedy_refuses_forbid_on_a_backend_that_cannot_mask(backend, monkeypatch):
    from refine.api import generate_greedy
    from refine.backends.hf import HFSession

    monkeypatch.setattr(HFSession, "supports_banned", False)
    with pytest.raises(InputError, match="forbid"):
        generate_greedy(backend, PROMPT, 8, forbid=("a",))
    assert generate_greedy(backend, PROMPT, 8)  # no rule: nothing to mask


@pytest.mark.parametrize("way", ["wrapper", "custom_generate"])
def test_hf_adapters_decode_the_start_without_forbidden_tokens(llama, tok, backend, way):
    from refine.integrations.hf import custom_generate, generate

    enc = tok(["the b", "a dog"], return_tensors="pt", padding=True)
    cfg = {"objective": "mean", "forbid": ["g", "n"], "budget": {"max_sweeps": 1}}
    banned = forbidden_ids(backend.tokenizer, ("g", "n"))
    kw = dict(max_new_tokens=10, do_sample=False, num_beams=2)
    plain = llama.generate(**enc, **kw)[:, enc["input_ids"].shape[1]:]
    assert set(plain.ravel().tolist()) & banned
    ref = llama.generate(**enc, suppress_tokens=sorted(banned), **kw)
    if way == "wrapper":
        out = generate(llama, **enc, tokenizer=tok, refine=cfg, **kw)
    else:
        out = llama.generate(**enc, custom_generate=custom_generate, refine=cfg, refine_tokenizer=tok,
                             return_dict_in_generate=True, **kw)
    assert torch.equal(out.initial_sequences, ref)
    for r in out.results:
        assert not set(r.initial_tokens) & banned and not set(r.tokens) & banned


def test_forbidding_every_token_is_caught_when_the_output_layer_is_padded(tok):
    """Rows of the output layer past the tokenizer's vocabulary have no text: they do not count as tokens left."""
    from refine.backends.hf import HFBackend
    from refine.testing import tiny_llama

    padded = HFBackend(tiny_llama(seed=0, vocab_size=40), tok)
    assert padded.tokenizer.vocab_size == 40 > len(tok)
    with pytest.raises(ConfigError, match="every token"):
        forbidden_ids(padded.tokenizer, lambda t: True)
    assert forbidden_ids(padded.tokenizer, lambda t: t != "?") == set(range(3, 33))
