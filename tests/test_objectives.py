import math

import numpy as np
import pytest

from refine.errors import ConfigError, RewardError
from refine.objectives import CandidateView, Objective, coverage


def view(tokens, probs, text=None, ended=True):
    return CandidateView(tuple(tokens), np.log(np.asarray(probs, dtype=float)), text, ended)


V = view([5, 6, 7, 1], [0.5, 0.25, 0.5, 0.5], text="a dog runs")


def value(spec, v=V):
    obj = Objective.from_spec(spec)
    vals, terms = obj.evaluate([v])
    return float(vals[0]), terms[0]


def test_sum_mean_gnmt_exact():
    s = math.log(0.5) * 3 + math.log(0.25)
    assert value("sum")[0] == pytest.approx(s)
    assert value("mean")[0] == pytest.approx(s / 4)
    assert value({"gnmt": {"alpha": 0.6}})[0] == pytest.approx(s / ((5 + 4) / 6) ** 0.6)
    assert value({"gnmt": {"alpha": 0.0}})[0] == pytest.approx(s)


def test_length_counts_content_tokens_only():
    assert value("length")[0] == 3.0
    assert value("length", view([5, 6, 7], [0.5] * 3, ended=False))[0] == 3.0


def test_weighted_sum_and_terms():
    total, terms = value({"sum": 1.0, "length": 0.5})
    assert total == pytest.approx(terms["sum"] + 0.5 * terms["length"])
    assert set(terms) == {"sum", "length"}


def test_repetition_share_of_repeated_ngrams():
    v = view([1, 2, 1, 2, 1, 2, 9], [0.5] * 7)  # content [1,2,1,2,1,2]: bigrams 12 21 12 21 12 -> 3 repeats of 5
    assert value({"repetition": {"n": 2}}, v)[0] == pytest.approx(-3 / 5)
    assert value({"repetition": {"n": 3}}, view([1, 2, 3, 1], [0.5] * 4))[0] == 0.0


def test_coverage_with_inflections():
    assert coverage(["dog", "run", "dance", "carry"], "The dogs were running, dancing and carries.") == 1.0
    assert coverage(["cat", "dog"], "a dog") == 0.5
    assert coverage(["car", "sit", "5"], "careful situation 50") == 0.0  # prefixes are not words
    assert coverage(["café"], "Un Café.") == 1.0
    assert value({"coverage": {"words": ["dog", "cat"]}})[0] == 0.5


def test_reference_ce_prefers_reference_tokens():
    class Tok:
        vocab_size = 10

        def encode(self, text):
            return [ord(c) - 97 for c in text]

    obj = Objective.from_spec({"reference_ce": {"references": ["abab"], "eps": 0.1}})
    obj.bind(Tok())
    close = view([0, 1, 0, 1], [0.5] * 4, ended=False)
    far = view([7, 8, 9, 7], [0.5] * 4, ended=False)
    vals, _ = obj.evaluate([close, far])
    assert vals[0] > vals[1]
    # exact: q(a) = (2 + .1) / (4 + .1 * 10)
    assert vals[0] == pytest.approx(math.log(2.1 / 5.0))


def test_reward_called_on_text_and_checked():
    obj = Objective.from_spec({"sum": 1.0, "reward": {"fn": lambda t: len(t), "weight": 0.1}})
    total, terms = obj.evaluate([V])
    assert terms[0]["reward"] == len("a dog runs")
    for bad in (lambda t: float("nan"), lambda t: float("inf"), lambda t: 1 / 0, lambda t: "x"):
        with pytest.raises(RewardError):
            Objective.from_spec({"reward": {"fn": bad}}).evaluate([V])


@pytest.mark.parametrize(
    "spec, field",
    [
        ("nope", "objective"),
        ({"gnmt": {"alpha": -1}}, "gnmt.alpha"),
        ({"repetition": {"n": 0}}, "repetition.n"),
        ({"coverage": {"words": []}}, "coverage.words"),
        ({"reward": {"fn": 3}}, "reward.fn"),
        ({"sum": "heavy"}, "objective.sum"),
        ({"sum": float("nan")}, "objective.sum.weight"),
        ({}, "objective"),
    ],
)
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Objective.from_spec(spec)
