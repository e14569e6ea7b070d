"""The HF backend: cached scoring equals a plain forward; decoding equals HF greedy; costs bound spending."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from refine.backends.base import DecodeRequest
from refine.errors import InputError

PROMPT = [21, 9, 6, 4]  # "the b" in char ids


def full_logprobs(model, prompt, seq):
    ids = torch.tensor([list(prompt) + list(seq)])
    with torch.no_grad():
        lp = model(ids).logits[0].float().log_softmax(-1)
    n = len(prompt)
    return np.array([lp[n - 1 + t, seq[t]].item() for t in range(len(seq))]), lp[n - 1 : n - 1 + len(seq)]


seq_st = st.lists(st.integers(3, 33), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None)
@given(base=st.lists(st.integers(3, 33), max_size=10), seqs=st.lists(seq_st, min_size=1, max_size=4),
       share=st.lists(st.integers(0, 10), min_size=4, max_size=4), warm=seq_st)
def test_cached_scoring_matches_full_forward(llama, backend, base, seqs, share, warm):
    session = backend.open(PROMPT, topk=5, max_batch_tokens=16)  # tiny chunks: exercises chunking
    session.score([tuple(warm)])  # leave an unrelated prefix in the cache first
    rows = [tuple(base[:k] + s) for k, s in zip(share, seqs)]  # rows share prefixes of different lengths
    for row, (start, sc) in zip(rows, session.score(rows, base)):
        assert row[:start] == tuple(base[:start]) and start < len(row)
        ref, ref_lp = full_logprobs(llama, PROMPT, row)
        np.testing.assert_allclose(sc.logprobs, ref[start:], atol=1e-4)
        top = torch.topk(ref_lp[start:], 5, dim=-1)
        np.testing.assert_allclose(sc.topk_logprobs, top.values.numpy(), atol=1e-4)
        ent = -(ref_lp.exp() * ref_lp).sum(-1)[start:].numpy()
        np.testing.assert_allclose(sc.entropy, ent, atol=1e-4)


def test_decode_matches_hf_greedy_and_scores(llama, backend):
    session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    base = (5, 6, 7, 8, 9)
    reqs = [DecodeRequest((5, 6), 9), DecodeRequest((5, 6, 7, 8), 4), DecodeRequest((5,), 6, min_new=6),
            DecodeRequest((5, 9), 3, force_eos=True), DecodeRequest((), 5), DecodeRequest((12, 13, 14), 3)]
    out = session.decode(reqs, base)
    for req, (start, dec) in zip(reqs, out):
        assert dec.tokens[: len(req.tokens)] == req.tokens and dec.tokens[:start] == base[:start]
        lp, _ = full_logprobs(llama, PROMPT, dec.tokens)
        np.testing.assert_allclose(dec.scores.logprobs, lp[start:], atol=1e-4)
        if req.force_eos:
            # ends with EOS: forced at the last slot, and scored, not faked
            assert len(dec.tokens) <= len(req.tokens) + req.max_new and dec.tokens[-1] == 1
            continue
        ids = torch.tensor([PROMPT + list(req.tokens)])
        ref = llama.generate(ids, max_new_tokens=req.max_new, min_new_tokens=req.min_new or None,
                             do_sample=False)[0, len(PROMPT):].tolist()
        assert list(dec.tokens) == ref


def test_costs_bound_spending(backend):
    session = backend.open(PROMPT, topk=4, max_batch_tokens=10)
    seqs = [(5, 6, 7), (5, 8), (5, 6, 7, 8, 9), (9,)]
    before = session.forward_tokens
    bound = session.score_cost(seqs, (5, 6, 7, 8))
    session.score(seqs, (5, 6, 7, 8))
    assert 0 < session.forward_tokens - before <= bound
    reqs = [DecodeRequest((5, 6), 7), DecodeRequest((5, 7, 7), 2), DecodeRequest((), 3)]
    before = session.forward_tokens
    bound = session.decode_cost(reqs, (5, 6, 7))
    session.decode(reqs, (5, 6, 7))
    assert 0 < session.forward_tokens - before <= bound


def test_callers_tensors_untouched(llama, backend):
    prompt = torch.tensor(PROMPT)
    copy = prompt.clone()
    session = backend.open(prompt.tolist(), topk=4, max_batch_tokens=64)
    session.decode([DecodeRequest((), 5)])
    assert torch.equal(prompt, copy)


def test_empty_prompt_refused(backend):
    with pytest.raises(InputError, match="empty"):
        backend.open([], topk=4, max_batch_tokens=64)


def test_mismatched_tokenizer_refused(tok):
    from refine.backends.hf import HFBackend
    from refine.testing import tiny_llama

    with pytest.raises(InputError, match="do not belong together"):
        HFBackend(tiny_llama(vocab_size=20), tok)


def test_encoder_decoder_refused(tok):
    from transformers import T5Config, T5ForConditionalGeneration

    from refine.backends.hf import HFBackend

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8))
    with pytest.raises(InputError, match="encoder-decoder"):
        HFBackend(t5, tok)


def _plain_greedy(llama, tokens, n):
    ids = torch.tensor([PROMPT + list(tokens)])
    return tuple(llama.generate(ids, max_new_tokens=n, do_sample=False)[0, len(PROMPT):].tolist())


def test_drafts_from_base_are_exact_and_save_calls(llama, backend):
    target = _plain_greedy(llama, (5,), 30)
    req = DecodeRequest((5,), 30)
    plain = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    plain.walk_window = 0
    ((_, a),) = plain.decode([req], base=(5,))  # nothing to draft from
    drafted = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    drafted.walk_window = 0  # drafts alone (a walk would take the whole continuation from one forward of base)
    ((_, b),) = drafted.decode([req], base=target)  # the base predicts the continuation exactly
    assert a.tokens == b.tokens == target
    np.testing.assert_allclose(a.scores.logprobs, b.scores.logprobs, atol=1e-4)
    assert drafted.forward_calls < plain.forward_calls / 3


@pytest.mark.parametrize("reject_at", [None, 4, 8])
def test_prune_checkpoints_do_not_depend_on_drafts(llama, backend, reject_at):
    target = _plain_greedy(llama, (5,), 30)
    req = DecodeRequest((5,), 30)

    def run(base):
        seen = []

        def prune(row, tokens, scores):
            seen.append((len(tokens), len(scores.logprobs), tokens))
            return reject_at is not None and len(tokens) - 1 >= reject_at

        session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
        ((_, dec),) = session.decode([req], base=base, prune=prune)
        return seen, dec, session.forward_calls

    plain, plain_dec, plain_calls = run((5,))  # nothing to draft from: one token per call
    drafted, drafted_dec, drafted_calls = run(target)  # the base predicts everything: many tokens per call
    assert drafted_calls < plain_calls
    # the callback sees the same prefixes, at every 4th generated token, whichever way they were decoded
    assert drafted == plain
    assert [n - 1 for n, _, _ in plain] == list(range(4, 4 * len(plain) + 1, 4))
    assert all(k == n for n, k, _ in plain)  # scores cover exactly the tokens shown
    assert drafted_dec.pruned == plain_dec.pruned == (reject_at is not None)


def test_draft_width_pays_for_its_columns(backend):
    s = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    assert s._width([[], []], [0.9, 0.9]) == 1  # nothing to draft
    assert s._width([list(range(20))], [0.97]) > 10  # one row, drafts nearly always right: draft long
    assert s._width([list(range(8))] * 24, [0.2] * 24) == 1  # many rows, drafts mostly wrong: no columns
    # a short draft of a trusted row is taken whole when alone, not when 31 idle rows pay its padding
    assert s._width([[1, 2]], [0.9]) == 3
    assert s._width([[1, 2]] + [[]] * 31, [0.9] * 32) == 1


@settings(max_examples=60, deadline=None)
@given(widths=st.lists(st.integers(1, 40), min_size=1, max_size=7), cap=st.integers(30, 120),
       overhead=st.integers(0, 50))
def test_score_chunks_are_optimal_and_within_the_cap(backend, widths, cap, overhead):
    import itertools

    s = backend.open(PROMPT, topk=4, max_batch_tokens=cap)
    s.call_overhead_tokens = overhead
    widths = sorted(widths, reverse=True)
    chunks = s._partition(widths)
    assert [a for a, _ in chunks] == [0] + [b for _, b in chunks[:-1]] and chunks[-1][1] == len(widths)

    def cost(parts):
        return sum((b - a) * widths[a] + overhead for a, b in parts)

    for a, b in chunks:
        assert b - a == 1 or (b - a) * widths[a] <= cap
    # brute force over every way to cut the sorted rows into consecutive chunks within the cap
    n, best = len(widths), float("inf")
    for mask in itertools.product([0, 1], repeat=n - 1):
        cuts = [0] + [i + 1 for i, m in enumerate(mask) if m] + [n]
        parts = list(zip(cuts, cuts[1:]))
        if all(b - a == 1 or (b - a) * widths[a] <= cap for a, b in parts):
            best = min(best, cost(parts))
    assert cost(chunks) == best


@settings(max_examples=50, deadline=None)
@given(lens=st.lists(st.integers(0, 12), min_size=1, max_size=8),
       q=st.floats(0.0, 0.99), dq=st.floats(0.0, 0.5))
def test_draft_width_grows_with_acceptance(backend, lens, q, dq):
    s = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    drafts = [list(range(n)) for n in lens]
    w = s._width(drafts, [q] * len(lens))
    assert 1 <= w <= max(lens) + 1
    assert s._width(drafts, [min(q + dq, 0.999)] * len(lens)) >= w


@settings(max_examples=20, deadline=None)
@given(noise=st.lists(st.integers(3, 33), min_size=0, max_size=12), cut=st.integers(0, 20),
       edit=st.integers(3, 33), n=st.integers(1, 25), tight=st.booleans())
def test_drafting_never_changes_the_greedy_result(llama, backend, noise, cut, edit, n, tight):
    # base: a plausible continuation spliced with noise, so drafts are partly right and partly wrong
    target = _plain_greedy(llama, (5,), 25)
    base = target[:cut] + tuple(noise) + target[cut:]
    session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    reqs = [DecodeRequest((5,), n), DecodeRequest(base[:2] + (edit,), n)]
    bound = session.decode_cost(reqs, base)
    before = session.forward_tokens
    out = session.decode(reqs, base, limit=bound if tight else None)
    for req, (_, dec) in zip(reqs, out):
        assert dec.tokens == req.tokens + _plain_greedy(llama, req.tokens, n)[len(req.tokens):]
    if tight:
        assert session.forward_tokens - before <= bound


# ---------------------------------------------------------------------- beam and sampled re-decoding

def test_beam_of_full_width_finds_the_best_short_continuation(llama, backend):
    """Width = vocabulary over two tokens keeps every path: the result is the exact best by sum log P, found by
    enumerating every complete continuation (EOS, or any two tokens); its scores are those of a plain forward."""
    V = llama.config.vocab_size
    session = backend.open(PROMPT, topk=4, max_batch_tokens=1 << 16)
    ((start, dec),) = session.decode([DecodeRequest((5,), 2, beam=V)], (5, 6, 7))
    lp, _ = full_logprobs(llama, PROMPT, dec.tokens)
    np.testing.assert_allclose(dec.scores.logprobs, lp[start:], atol=1e-4)
    rows = [(5, 1)] + [(5, a, b) for a in range(V) if a != 1 for b in range(V)]
    totals = [float(sc.logprobs.sum()) for _, sc in session.score(rows)]
    assert dec.tokens == rows[int(np.argmax(totals))]


def test_beam_one_is_greedy_and_beam_recovers_what_greedy_misses(bigram_backend):
    """On the bigram table where greedy takes 'a' (0.6) but 'b' (0.4) leads to the likelier output, a beam of 2
    keeps 'b' and returns it; a beam of 1 is greedy."""
    from tests.conftest import A, B, S

    session = bigram_backend.open([S], topk=4, max_batch_tokens=4096)
    (_, greedy), (_, one), (_, two) = session.decode(
        [DecodeRequest((), 4), DecodeRequest((), 4, beam=1), DecodeRequest((), 4, beam=2)])
    assert greedy.tokens[0] == A and one.tokens == greedy.tokens
    assert two.tokens[0] == B and two.tokens[-1] == 1
    assert two.scores.logprobs.sum() > greedy.scores.logprobs.sum()


def test_beam_keeps_length_rules_and_cost_bound(llama, backend):
    session = backend.open(PROMPT, topk=4, max_batch_tokens=64)  # small chunks
    reqs = [DecodeRequest((5, 6), 5, beam=3), DecodeRequest((5,), 4, min_new=4, beam=2),
            DecodeRequest((5, 9), 3, force_eos=True, beam=2), DecodeRequest((7,), 4)]
    before = session.forward_tokens
    bound = session.decode_cost(reqs, (5, 6, 7))
    out = session.decode(reqs, (5, 6, 7))
    assert 0 < session.forward_tokens - before <= bound
    for req, (start, dec) in zip(reqs, out):
        gen = dec.tokens[len(req.tokens):]
        assert dec.tokens[: len(req.tokens)] == req.tokens and len(gen) <= req.max_new
        assert 1 not in gen[: req.min_new - 1] if req.min_new else True
        if req.force_eos:
            assert dec.tokens[-1] == 1
        lp, _ = full_logprobs(llama, PROMPT, dec.tokens)
        np.testing.assert_allclose(dec.scores.logprobs, lp[start:], atol=1e-4)


def test_sampled_decode_reports_its_proposal_density_and_follows_its_seed(llama, backend):
    """Each drawn token's reported log-density is log softmax(logits / T) at it (from a plain forward); a seed
    gives the same sample whatever it is batched with; different seeds give different samples."""
    session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    T = 1.7
    reqs = [DecodeRequest((5,), 8, temperature=T, seed=s) for s in range(6)]
    out = session.decode(reqs + [DecodeRequest((9,), 5)], (5, 6))
    for req, (start, dec) in zip(reqs, out):
        gen = dec.tokens[1:]
        assert len(dec.sample_logprobs) == len(gen)
        lp, full = full_logprobs(llama, PROMPT, dec.tokens)
        np.testing.assert_allclose(dec.scores.logprobs, lp[start:], atol=1e-4)
        q = torch.log_softmax(full.double() / T, -1)  # (len, V): log p tempered and renormalised
        np.testing.assert_allclose(dec.sample_logprobs, [float(q[1 + j, t]) for j, t in enumerate(gen)], atol=1e-4)
    assert out[-1][1].sample_logprobs is None  # a greedy row alongside stays greedy
    assert len({dec.tokens for _, dec in out[:6]}) > 1
    ((_, again),) = session.decode([reqs[3]])
    assert again.tokens == out[3][1].tokens


def test_sampled_decode_takes_drafts_and_draws_the_same_tokens(backend):
    """A sampled row verifies drafts from ``base`` by its own draws: with the output of a seed as ``base``, the same
    seed draws the same tokens and densities, several per forward call."""
    req = DecodeRequest((5,), 12, temperature=0.5, seed=7)
    plain = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    ((_, first),) = plain.decode([req])
    assert plain.drafted_tokens == 0  # no base: nothing to draft from
    drafting = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    drafting.walk_window = 0  # drafts alone, no walk along base
    ((_, again),) = drafting.decode([req], first.tokens)
    assert again.tokens == first.tokens
    np.testing.assert_allclose(again.sample_logprobs, first.sample_logprobs, atol=1e-6)
    assert drafting.accepted_draft_tokens > 0 and drafting.forward_calls < plain.forward_calls


def _full_check(llama, start, dec):
    """``dec``'s scores from ``start`` are the model's log-probs of its tokens."""
    lp, _ = full_logprobs(llama, PROMPT, dec.tokens)
    np.testing.assert_allclose(dec.scores.logprobs, lp[start:], atol=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0])
def test_a_walk_along_base_draws_what_decoding_draws_without_running_the_model(llama, backend, temperature):
    """A request that continues a prefix of ``base`` takes its tokens from one forward of ``base`` while it
    stays on it: the same tokens, the same densities (same generator, same order of draws) and exact scores;
    where ``base`` and the draws part, decoding goes on with the same generator."""
    sampled = temperature > 0
    req = DecodeRequest((5,), 12, temperature=temperature, seed=7 if sampled else None)
    plain = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    ((start0, first),) = plain.decode([req])
    assert len(first.tokens) > 6
    # base = the row's own output: the whole row is walked, one forward of base and no decoding call
    walking = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    ((start, again),) = walking.decode([req], first.tokens)
    assert again.tokens == first.tokens and start == start0  # reported as plain decoding reports it
    _full_check(llama, start, again)
    np.testing.assert_allclose(again.scores.logprobs, first.scores.logprobs, atol=1e-4)
    np.testing.assert_allclose(again.scores.entropy, first.scores.entropy, atol=1e-4)
    if sampled:
        np.testing.assert_allclose(again.sample_logprobs, first.sample_logprobs, atol=1e-6)
    assert walking.forward_calls <= 2 < plain.forward_calls  # the prompt's cache, then base in one forward
    assert walking.drafted_tokens == 0
    # base leaves the row's path at position 4: walked up to there, decoded on from there, same draws
    other = first.tokens[:4] + tuple(3 + (t - 2) % 30 for t in first.tokens[4:])  # every later token differs
    assert all(a != b for a, b in zip(other[4:], first.tokens[4:]))
    parted = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    ((start, split),) = parted.decode([req], other)
    assert split.tokens == first.tokens and start == start0
    _full_check(llama, start, split)
    np.testing.assert_allclose(split.scores.logprobs, first.scores.logprobs, atol=1e-4)
    if sampled:
        np.testing.assert_allclose(split.sample_logprobs, first.sample_logprobs, atol=1e-6)


def test_a_walk_keeps_length_rules_and_leaves_forks_beams_and_pruned_calls_alone(llama, backend):
    base = _plain_greedy(llama, (5,), 20)
    # min_new and force_eos count the walked tokens as generated ones
    req = DecodeRequest((5,), 6, force_eos=True)
    s = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    ((_, dec),) = s.decode([req], base)
    eos = backend.tokenizer.eos_ids[0]
    assert dec.tokens == base[:6] + (eos,)
    plain = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    ((_, ref),) = plain.decode([req])
    assert ref.tokens == dec.tokens
    # a fork family and beams decode as before (no walk: the walk session's call count equals a plain one's)
    reqs = [DecodeRequest((5,), 8), DecodeRequest((5,), 8, fork=(0, 3)), DecodeRequest((5,), 5, beam=2)]
    a = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    out_a = a.decode(reqs, base)
    b = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    b.walk_window = 0
    out_b = b.decode(reqs, base)
    assert [d.tokens for _, d in out_a] == [d.tokens for _, d in out_b]
    assert a.forward_calls == b.forward_calls
    # with a prune callback nothing walks (its checkpoints see every generated token)
    seen = []
    c = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    c.decode([DecodeRequest((5,), 12)], base, prune=lambda r, toks, sc: seen.append(len(toks)) or False)
    assert seen and seen[0] == 1 + c.prune_every


def test_decode_cost_bounds_a_walking_call(llama, backend):
    base = _plain_greedy(llama, (5,), 20)
    reqs = [DecodeRequest(base[:k], 24 - k, temperature=1.0, seed=k) for k in (1, 3, 9, 15)]
    s = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    cost = s.decode_cost(reqs, base)
    s.decode(reqs, base)
    assert s.forward_tokens <= cost


def test_sampled_request_needs_a_seed():
    with pytest.raises(ValueError, match="seed"):
        DecodeRequest((), 3, temperature=1.0)
    with pytest.raises(ValueError, match="beam"):
        DecodeRequest((), 3, beam=0)


def test_a_branch_draws_what_a_request_from_its_prefix_draws(llama, backend):
    """A ``fork`` request equals an ordinary request from its parent's tokens plus the parent's first ``keep``
    generated tokens, with the same seed: same tokens, scores and densities of its own draws, also when the
    parent drafts (a branch point inside a draft). A branch whose parent stops first comes back unrun (the
    parent's output, ``forked`` False)."""
    T = 1.3
    parent = DecodeRequest((5,), 10, min_new=9, temperature=T, seed=3)  # no EOS before 9 tokens
    short = DecodeRequest((5,), 3, temperature=T, seed=4)  # stops after 3 tokens, before its branch at 5
    keeps = (1, 4, 8)
    reqs = [parent, short, *(DecodeRequest((5,), 10, temperature=T, seed=10 + k, fork=(0, k)) for k in keeps),
            DecodeRequest((5,), 10, fork=(0, 2)),  # a greedy branch of a sampled row
            DecodeRequest((5,), 10, temperature=T, seed=20, fork=(1, 5)),
            DecodeRequest((5, 7), 6)]  # an unrelated greedy row
    ((_, first),) = backend.open(PROMPT, topk=4, max_batch_tokens=4096).decode([parent])
    session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    out = session.decode(reqs, first.tokens)  # the parent's own output as base: it drafts, in step with it
    assert out[0][1].tokens == first.tokens and session.accepted_draft_tokens > 0
    gen = out[0][1].tokens[1:]
    assert len(gen) > max(keeps) and 1 not in gen[:-1]  # the parent ran past every branch point
    for req, (_, dec) in zip(reqs[2:6], out[2:6]):
        k = req.fork[1]
        assert dec.forked is True and dec.tokens[: 1 + k] == out[0][1].tokens[: 1 + k]
        plain = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
        ((_, ref),) = plain.decode([DecodeRequest(dec.tokens[: 1 + k], 10 - k, temperature=req.temperature,
                                                  seed=req.seed)])
        assert dec.tokens == ref.tokens
        lp, _ = full_logprobs(llama, PROMPT, dec.tokens)
        np.testing.assert_allclose(dec.scores.logprobs, lp[len(dec.tokens) - len(dec.scores.logprobs):], atol=1e-4)
        if req.sampled:
            np.testing.assert_allclose(dec.sample_logprobs, ref.sample_logprobs, atol=1e-6)
        else:
            assert dec.sample_logprobs is None
    unrun = out[6][1]
    assert unrun.forked is False and unrun.tokens == out[1][1].tokens and len(unrun.sample_logprobs) == 0
    assert out[0][1].forked is None and out[-1][1].tokens[:2] == (5, 7)


def test_fork_requests_are_checked():
    with pytest.raises(ValueError, match="fork"):
        DecodeRequest((5,), 4, fork=(0, 0))  # keeps nothing: an ordinary request
    with pytest.raises(ValueError, match="fork"):
        DecodeRequest((5,), 4, fork=(0, 4))  # keeps every token it may have


def test_a_fork_must_name_a_plain_request_with_its_tokens(backend):
    session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    with pytest.raises(ValueError, match="parent's tokens"):
        session.decode([DecodeRequest((5,), 4), DecodeRequest((6,), 4, fork=(0, 1))])
    with pytest.raises(ValueError, match="plain"):
        session.decode([DecodeRequest((5,), 4), DecodeRequest((5,), 4, fork=(0, 1)),
                        DecodeRequest((5,), 4, fork=(1, 2))])


def test_drafting_leaves_room_for_branches_to_come(backend):
    """With ``limit`` at the plain cost, a row that drafts (in step with ``base``) may only speculate with room
    that the branches not yet spawned will not need."""
    T = 0.5
    drafter = DecodeRequest((5,), 12, min_new=11, temperature=T, seed=7)
    ((_, first),) = backend.open(PROMPT, topk=4, max_batch_tokens=4096).decode([drafter])
    parent = DecodeRequest((5,), 12, min_new=11, temperature=T, seed=8)
    reqs = [drafter, parent] + [DecodeRequest((5,), 12, temperature=T, seed=20 + k, fork=(1, k)) for k in (8, 9, 10)]
    session = backend.open(PROMPT, topk=4, max_batch_tokens=4096)
    limit = session.decode_cost(reqs, first.tokens)
    out = session.decode(reqs, first.tokens, limit)
    assert out[0][1].tokens == first.tokens and all(dec.forked for _, dec in out[2:])
    assert session.forward_tokens <= limit


def test_no_forward_call_holds_more_than_max_batch_tokens(llama, backend):
    """Prefill of a long prompt, the walk along a long base and drafted decoding all keep to the cap, and give the
    tokens and scores of an uncapped session."""
    calls = []
    hook = llama.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].numel()), with_kwargs=True)
    try:
        prompt = list(range(3, 33)) * 2
        capped, free = backend.open(prompt, 3, max_batch_tokens=16), backend.open(prompt, 3, max_batch_tokens=4096)
        ((_, a),), ((_, b),) = capped.score([(5, 6)]), free.score([(5, 6)])
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
        ((_, d),) = backend.open([5, 6], 3, max_batch_tokens=4096).decode([DecodeRequest((), 60)])
        base = d.tokens[:-1] if d.tokens[-1] == 1 else d.tokens
        assert len(base) > 40
        reqs = [DecodeRequest(base[:i], 60) for i in (3, 5, 7, 9)]
        for kw in ({}, {"prune": lambda *a: False}):  # walked, then drafted (a prune test turns drafts on)
            calls.clear()
            got = backend.open([5, 6], 3, max_batch_tokens=16).decode(reqs, base, **kw)
            assert max(calls) <= 16
            want = backend.open([5, 6], 3, max_batch_tokens=4096).decode(reqs, base, **kw)
            assert [g.tokens for _, g in got] == [w.tokens for _, w in want]
    finally:
        hook.remove()
