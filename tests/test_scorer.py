"""A second model as scorer: exact scores on the scorer's own tokens, BOS, acceptance, budget, memo, entry points."""

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refine import RefineConfig
from refine.api import refine, refine_tokens, scorer_prompt_ids
from refine.backends.hf import HFBackend
from refine.errors import ConfigError
from refine.scorer import Scorer
from refine.search import run_search
from refine.testing import BigramLM, other_char_tokenizer, tiny_llama

PROMPT = "hello there"


@pytest.fixture(scope="module")
def tok2():
    return other_char_tokenizer()


@pytest.fixture(scope="module")
def llama2(tok2):
    return tiny_llama(seed=7, vocab_size=len(tok2))


@pytest.fixture(scope="module")
def scorer_backend(llama2, tok2):
    return HFBackend(llama2, tok2)


def plain_logprobs(model, ids, n_prompt):
    """Log-probabilities of ``ids[n_prompt:]`` from one plain forward of the whole sequence."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return np.array([float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids))])


def expected_terms(model, tok2, gen_tok, tokens, eos_ids):
    """Sum and mean of the scorer's log-probs of a generator candidate, computed independently."""
    prompt = tok2(PROMPT).input_ids
    assert prompt[0] == tok2.bos_token_id  # the scorer's prompt starts with its BOS
    ids = tok2.encode(gen_tok.decode(list(tokens), skip_special_tokens=True), add_special_tokens=False)
    if tokens and tokens[-1] in eos_ids:
        ids.append(tok2.eos_token_id)
    lp = plain_logprobs(model, prompt + ids, len(prompt))
    return float(lp.sum()), float(lp.mean()), len(ids)


def collect_memo():
    seen = {}

    def progress(search):
        seen.update({k: h for k, h in search._memo.items()})
        seen["search"] = search

    return seen, progress


def test_terms_equal_a_plain_forward_of_the_scorer_on_its_own_tokens(backend, tok, llama2, tok2, scorer_backend):
    prompt_ids = tok(PROMPT).input_ids
    out = [tok.convert_tokens_to_ids(c) for c in "a cat sat"] + [tok.eos_token_id]
    seen, progress = collect_memo()
    cfg = RefineConfig(objective={"sum": 1.0, "mean": 1.0, "length": 0.0}, moves=("substitute", "regenerate"),
                       top_k=2, max_positions=3, regen_extra_tokens=2, repeat_guard=None, scorer=scorer_backend,
                       budget={"max_sweeps": 1})
    r = refine_tokens(backend, prompt_ids, out, cfg, progress, scorer_prompt=PROMPT, chat=False)
    search = seen.pop("search")
    assert search._pruner(search.current) is None  # no lookahead on the generator's scores with a scorer
    hyps = list(seen.values())
    assert len(hyps) > 5 and any(h.ended for h in hyps) and any(not h.ended for h in hyps)
    for h in hyps:
        s, m, n = expected_terms(llama2, tok2, tok, h.tokens, backend.tokenizer.eos_ids)
        assert h.terms["sum"] == pytest.approx(s, abs=1e-4)
        assert h.terms["mean"] == pytest.approx(m, abs=1e-4)
        assert h.terms["length"] == n - (1 if h.ended else 0)  # token counts are the scorer's
    s, m, _ = expected_terms(llama2, tok2, tok, r.tokens, backend.tokenizer.eos_ids)
    assert r.terms["sum"] == pytest.approx(s, abs=1e-4)
    # prefix reuse was exercised: some rows were scored from a shared prefix with their parent
    assert r.stats.scorer_forward_tokens < sum(len(tok2(PROMPT).input_ids) + len(h.tokens) for h in hyps)


def test_the_scorer_prompt_defaults_to_the_generator_prompt_as_text(backend, tok, scorer_backend, tok2):
    ids = scorer_prompt_ids(scorer_backend, backend, tok(PROMPT).input_ids + [tok.bos_token_id])
    assert ids == tok2(PROMPT).input_ids  # specials dropped, the scorer's BOS added
    assert scorer_prompt_ids(scorer_backend, backend, [5], [0, 7]) == [0, 7]


def test_ended_candidates_get_the_scorer_eos_and_unscorable_ones_minus_inf(backend, tok, scorer_backend, tok2):
    sc = Scorer(scorer_backend, tok2(PROMPT).input_ids, backend.tokenizer)
    ab = [tok.convert_tokens_to_ids(c) for c in "ab"]
    assert sc.tokens(ab + [tok.eos_token_id], ended=True) == (34, 33, tok2.eos_token_id)
    assert sc.tokens([tok.bos_token_id], ended=False) == ()
    (lp,) = sc.logprobs([()])
    assert lp.tolist() == [-np.inf] and sc.forward_tokens == 0


def test_the_same_text_is_scored_once(backend, tok, scorer_backend, tok2):
    sc = Scorer(scorer_backend, tok2(PROMPT).input_ids, backend.tokenizer)
    ab = [tok.convert_tokens_to_ids(c) for c in "ab"]
    # two generator sequences with one text: the second holds a special token that decoding drops
    rows = [sc.tokens(ab, False), sc.tokens([ab[0], tok.bos_token_id, ab[1]], False)]
    assert rows[0] == rows[1]
    assert sc.cost(rows) == sc.session.score_cost([rows[0]])
    first = sc.logprobs(rows)
    spent = sc.forward_tokens
    assert spent > 0 and np.array_equal(first[0], first[1])
    again = sc.logprobs(rows)
    assert sc.forward_tokens == spent and sc.cost(rows) == 0 and sc.reused >= 3
    assert np.array_equal(again[0], first[0])


# Generator (char_tokenizer ids) and scorer (other_char_tokenizer ids) that disagree: the generator's own sum
# prefers "bj" to the initial "ak"; the scorer prefers "am", which the generator proposes but ranks below "bj".
T2 = other_char_tokenizer()
C2 = T2.convert_tokens_to_ids
SCORER_TABLE = {
    C2("h"): {C2("a"): 0.9, C2("b"): 0.1},
    C2("a"): {C2("m"): 0.9, C2("k"): 0.05, C2("l"): 0.05},
    **{C2(c): {T2.eos_token_id: 0.99} for c in "jklmno"},
}


@pytest.fixture(scope="module")
def judge():
    return HFBackend(BigramLM(len(T2), SCORER_TABLE, eos_token_id=T2.eos_token_id), T2)


@pytest.mark.parametrize("strategy", ["coordinate", "best_first"])
def test_an_accepted_edit_is_one_the_scorer_prefers(bigram_backend, judge, tok, strategy):
    prompt, initial = [10], [3, 13, 1]  # "h" -> "ak<eos>"
    base = dict(objective="sum", top_k=5, moves=("substitute", "regenerate"), strategy=strategy)
    own = refine_tokens(bigram_backend, prompt, initial, base)
    judged = refine_tokens(bigram_backend, prompt, initial, {**base, "scorer": judge})
    assert tok.decode(own.tokens, skip_special_tokens=True) == "bj"  # the generator alone
    assert tok.decode(judged.tokens, skip_special_tokens=True) == "am"  # the scorer's choice
    assert judged.edits and all(e.after > e.before for e in judged.edits)
    ids = T2("ham").input_ids + [T2.eos_token_id]  # the scorer's BOS, the prompt "h", the answer, its EOS
    assert judged.score == pytest.approx(plain_logprobs(judge.model, ids, 2).sum(), abs=1e-4)
    assert judged.score == pytest.approx(np.log(0.9 * 0.9), abs=1e-3)
    assert judged.stats.scorer_forward_tokens > 0 and own.stats.scorer_forward_tokens == 0


def test_budget_counts_both_models(backend, tok, scorer_backend, tok2):
    prompt_ids = tok(PROMPT).input_ids
    out = [tok.convert_tokens_to_ids(c) for c in "a cat"] + [tok.eos_token_id]
    cfg = RefineConfig(scorer=scorer_backend, max_positions=3, regen_extra_tokens=2, budget={"max_sweeps": 1})
    session = backend.open(prompt_ids, cfg.topk_store, cfg.max_batch_tokens)
    sc = Scorer(scorer_backend, tok2(PROMPT).input_ids, backend.tokenizer)
    r = run_search(session, backend.tokenizer, out, cfg, 64, scorer=sc)
    assert r.stats.scorer_forward_tokens == sc.forward_tokens > 0
    assert r.stats.forward_tokens == session.forward_tokens + sc.forward_tokens
    assert r.stats.scorer_forward_calls == sc.forward_calls
    assert r.stats.forward_calls == session.forward_calls + sc.forward_calls


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cap=st.integers(min_value=40, max_value=600), moves=st.sampled_from([("regenerate",), ("substitute",),
                                                                            ("substitute", "regenerate")]))
def test_max_forward_tokens_is_never_exceeded(backend, tok, scorer_backend, cap, moves):
    prompt_ids = tok(PROMPT).input_ids
    out = [tok.convert_tokens_to_ids(c) for c in "a cat"] + [tok.eos_token_id]
    cfg = RefineConfig(scorer=scorer_backend, moves=moves, max_positions=3, regen_extra_tokens=2, top_k=2,
                       budget={"max_forward_tokens": cap, "max_sweeps": 2})
    try:
        r = refine_tokens(backend, prompt_ids, out, cfg, scorer_prompt=PROMPT)
    except ConfigError:  # the cap cannot even score the initial output with both models
        return
    assert r.stats.forward_tokens <= cap
    assert 0 < r.stats.scorer_forward_tokens < r.stats.forward_tokens


def test_config_scorer_field(scorer_backend, tmp_path):
    with pytest.raises(ConfigError, match="`scorer`"):
        RefineConfig(scorer=3)
    with pytest.raises(ConfigError, match="`scorer`"):
        RefineConfig(scorer="  ")
    assert RefineConfig(scorer=tmp_path).scorer == str(tmp_path)
    d = RefineConfig(scorer=scorer_backend).to_dict()
    assert d["scorer"] == "hf" and json.dumps(d)


def test_api_and_paths(llama, tok, llama2, tok2, tmp_path):
    gen_dir, judge_dir = tmp_path / "gen", tmp_path / "judge"
    for d, m, t in ((gen_dir, llama, tok), (judge_dir, llama2, tok2)):
        m.save_pretrained(d)
        t.save_pretrained(d)
    r = refine(PROMPT, "a cat", model=str(gen_dir), scorer=str(judge_dir), objective="sum",
               budget={"max_sweeps": 1})
    s, _, _ = expected_terms(llama2, tok2, tok, r.tokens, (tok.eos_token_id,))
    assert r.terms["sum"] == pytest.approx(s, abs=1e-4)
    assert r.initial_terms["sum"] == pytest.approx(
        expected_terms(llama2, tok2, tok, r.initial_tokens, (tok.eos_token_id,))[0], abs=1e-4)
    assert r.stats.scorer_forward_tokens > 0


def test_hf_adapter(llama, tok, llama2, tok2, scorer_backend):
    from refine.integrations.hf import custom_generate, generate

    enc = tok([PROMPT], return_tensors="pt")
    opts = {"objective": "sum", "scorer": scorer_backend, "budget": {"max_sweeps": 1}}
    out = generate(llama, **enc, tokenizer=tok, refine=opts, max_new_tokens=8, do_sample=False)
    (r,) = out.results
    s, _, _ = expected_terms(llama2, tok2, tok, r.tokens, (tok.eos_token_id,))
    assert r.terms["sum"] == pytest.approx(s, abs=1e-4)  # the scorer saw the prompt decoded to text
    assert r.stats.scorer_forward_tokens > 0
    res = llama.generate(**enc, custom_generate=custom_generate, refine=opts, refine_tokenizer=tok,
                         max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    assert res.results[0].tokens == r.tokens and res.results[0].score == pytest.approx(r.score, abs=1e-6)
