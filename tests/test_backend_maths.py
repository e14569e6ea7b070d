"""The backends' shared maths without any engine: common prefixes, the top-K entropy estimate, and the parsing of
vLLM-style per-position log-probability entries. Nothing here imports vLLM or torch."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from refine.backends.logprobs import scores_from_logprobs, topk_entropy_estimate
from refine.backends.prefix import common_prefix, score_start


def test_common_prefix():
    assert common_prefix((), ()) == 0
    assert common_prefix((1, 2, 3), (1, 2, 3)) == 3
    assert common_prefix((1, 2, 3), (1, 2)) == 2
    assert common_prefix([1, 2, 3], (1, 9, 3)) == 1
    assert common_prefix((4,), (1,)) == 0


def test_score_start_keeps_at_least_the_last_token():
    assert score_start((1, 2, 3, 4), (1, 2, 9)) == 2
    assert score_start((1, 2, 3), (1, 2, 3)) == 2  # identical: the last position is still scored
    assert score_start((1, 2, 3), (1, 2, 3, 4, 5)) == 2  # a prefix of the base
    assert score_start((7,), ()) == 0
    assert score_start((), (1, 2)) == 0


def test_one_common_prefix_helper_is_shared():
    import refine.diff
    import refine.strategies.relaxed

    assert refine.diff.common_prefix is common_prefix
    assert refine.strategies.relaxed.common_prefix is common_prefix


def test_these_modules_import_neither_vllm_nor_torch():
    code = ("import sys, refine.backends.logprobs, refine.backends.prefix, refine.search; "
            "bad = [m for m in ('vllm', 'torch') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _top(p: np.ndarray, k: int) -> np.ndarray:
    return np.log(np.sort(p)[::-1][:k])


def test_entropy_estimate_is_exact_when_the_top_k_hold_everything():
    p = np.array([0.5, 0.25, 0.125, 0.125])
    est = topk_entropy_estimate(_top(p, 4)[None, :], vocab_size=4)
    assert est[0] == pytest.approx(_entropy(p), abs=1e-12)


def test_entropy_estimate_is_exact_for_a_uniform_distribution():
    v, k = 1000, 16
    est = topk_entropy_estimate(np.full((1, k), -np.log(v)), vocab_size=v)
    assert est[0] == pytest.approx(np.log(v), abs=1e-9)


def test_entropy_estimate_lies_within_half_the_bound_gap_of_the_truth():
    rng = np.random.default_rng(0)
    v, k = 200, 8
    rows, truth, gaps = [], [], []
    for temperature in (0.3, 1.0, 3.0):
        for _ in range(20):
            logits = rng.normal(size=v) / temperature
            p = np.exp(logits - logits.max())
            p /= p.sum()
            top = _top(p, k)
            pt = np.exp(top)
            m = 1.0 - pt.sum()
            h_top = -(pt * top).sum()
            lower, upper = h_top - m * top[-1], h_top + m * np.log((v - k) / m)
            assert lower - 1e-9 <= _entropy(p) <= upper + 1e-9  # the bounds hold
            rows.append(top)
            truth.append(_entropy(p))
            gaps.append(upper - lower)
    est = topk_entropy_estimate(np.array(rows), vocab_size=v)
    assert np.all(np.abs(est - np.array(truth)) <= np.array(gaps) / 2 + 1e-9)


def test_entropy_estimate_of_no_rows_is_empty():
    assert topk_entropy_estimate(np.zeros((0, 4)), 10).shape == (0,)


def _entry(pairs):
    """A vLLM-like ``{token: Logprob}`` entry from ``(token, logprob, rank)`` triples."""
    return {t: SimpleNamespace(logprob=lp, rank=r) for t, lp, r in pairs}


def test_scores_from_logprobs_orders_top_k_by_rank_and_pads():
    entries = [
        _entry([(5, -0.1, 1), (7, -2.5, 2), (9, -3.0, 3)]),
        # the emitted token (4) is outside the top-k: it is listed with its own rank
        _entry([(3, -0.3, 1), (8, -1.6, 2), (4, -6.0, 40)]),
    ]
    sc = scores_from_logprobs([5, 4], entries, k=2, vocab_size=50)
    np.testing.assert_array_equal(sc.logprobs, [-0.1, -6.0])
    np.testing.assert_array_equal(sc.topk_ids, [[5, 7], [3, 8]])
    np.testing.assert_array_equal(sc.topk_logprobs, [[-0.1, -2.5], [-0.3, -1.6]])
    # k larger than the entries: padded with id 0 and -inf
    wide = scores_from_logprobs([5], entries[:1], k=5, vocab_size=50)
    assert list(wide.topk_ids[0, 3:]) == [0, 0] and np.all(np.isneginf(wide.topk_logprobs[0, 3:]))


def test_scores_from_logprobs_uses_exact_entropies_only_when_all_are_given():
    entries = [_entry([(1, -0.5, 1), (2, -1.0, 2)]), _entry([(2, -0.2, 1), (1, -1.8, 2)])]
    exact = scores_from_logprobs([1, 2], entries, 2, 10, entropy={0: 1.25, 1: 0.5})
    np.testing.assert_array_equal(exact.entropy, [1.25, 0.5])
    gappy = scores_from_logprobs([1, 2], entries, 2, 10, entropy={0: 1.25})
    est = topk_entropy_estimate(gappy.topk_logprobs, 10)
    np.testing.assert_allclose(gappy.entropy, est)
    assert gappy.entropy[0] != 1.25


def test_scores_from_logprobs_names_a_missing_token():
    with pytest.raises(RuntimeError, match="token 3 at position 1"):
        scores_from_logprobs([1, 3], [_entry([(1, -0.5, 1)]), _entry([(2, -0.2, 1)])], 1, 10)
    with pytest.raises(RuntimeError, match="position 0"):
        scores_from_logprobs([1], [None], 1, 10)
