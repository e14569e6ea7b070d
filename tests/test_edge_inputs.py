"""Odd inputs and tight budgets end in a clear error or in a result that keeps the contract (never a worse output
than the start, the right stop reason), never in a crash deep inside: validation of options, searches stopped
part-way, prompts that fill the context."""

import math

import pytest

from refine import ConfigError, RefineConfig
from refine.api import generate_greedy, refine_tokens
from refine.errors import InputError

PROMPT = "hello there"


@pytest.fixture(scope="module")
def start(backend, tok):
    prompt = tok.encode(PROMPT)
    return prompt, generate_greedy(backend, prompt, 10)


@pytest.mark.parametrize("options, message", [
    ({"seed": -1}, r"`seed` has to be an integer >= 0"),
    ({"moves": 5}, r"`moves` has to be a list of move names"),
    ({"moves": [["regenerate"]]}, r"`moves` has to be a list of move names"),
    ({"moves": {"regenerate": 1}}, r"`moves` has to be a list of move names"),
    ({"objective": ["mean", "repetition"]}, r"holds \(weight, refine.objectives.Term\) pairs"),
    ({"objective": [[1, "mean"]]}, r"holds \(weight, refine.objectives.Term\) pairs"),
    ({"objective": {"mean": 1e308, "sum": 1e308}}, r"`objective.mean.weight` has to be a number in \[-1e\+06"),
    ({"objective": {"mean": True}}, r"`objective.mean` has to be a weight"),
    ({"objective": {"repetition": {"n": True}}}, r"`repetition.n` has to be a strictly positive integer"),
    ({"objective": {"reference_ce": {"references": [5]}}}, r"`reference_ce.references` has to be"),
    ({"objective": {"reference_ce": {"references": [None]}}}, r"`reference_ce.references` has to be"),
    ({"objective": {"reference_ce": {"references": ["a"], "eps": 1e308}}}, r"`reference_ce.eps` has to be"),
    ({"exclude_special": "no"}, r"`exclude_special` has to be true or false"),
    ({"require_roundtrip": "yes"}, r"`require_roundtrip` has to be true or false"),
    ({"tolerance": True}, r"`tolerance` has to be a finite number"),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ConfigError, match=message):
        RefineConfig.from_dict(options)


def test_a_dict_objective_is_copied_and_read_only():
    spec = {"mean": 1.0, "coverage": {"words": ["dog", "park"]}}
    config = RefineConfig(objective=spec)
    spec["mean"] = "bogus"  # the caller's dict changes later: the config does not
    spec["coverage"]["words"].append("")
    with pytest.raises(TypeError):
        config.objective["mean"] = 2.0
    with pytest.raises(TypeError):
        config.objective["coverage"]["words"] = ("cat",)
    assert config.build_objective().to_spec() == {"mean": {"weight": 1.0},
                                                  "coverage": {"weight": 1.0, "words": ["dog", "park"]}}
    assert config.replace(top_k=4).build_objective().to_spec() == config.build_objective().to_spec()


def test_each_search_binds_terms_of_its_own():
    from refine.objectives import Objective
    from refine.objectives.reference import ReferenceCrossEntropy

    term = ReferenceCrossEntropy(["a cat"])
    config = RefineConfig(objective=Objective([(1.0, term)]))
    one, two = config.build_objective(), config.build_objective()
    assert one.terms[0][1] is not term and two.terms[0][1] is not one.terms[0][1]


def test_gradient_keeps_its_best_single_edit_when_the_budget_ends_the_step(backend, start):
    prompt, out = start
    options = {"strategy": "gradient", "max_new_tokens": 12}
    cut = refine_tokens(backend, prompt, out, {**options, "budget": {"max_forward_tokens": 200}})
    free = refine_tokens(backend, prompt, out, {**options, "budget": {"max_sweeps": 1}})
    # the first evaluation's best (what a whole first sweep accepts from its single edits or their stack) is
    # never lost because the stacked edits could not be afforded
    assert cut.stats.stop_reason == "max_forward_tokens"
    assert cut.score > cut.initial_score
    assert free.score > free.initial_score


def test_relaxed_stops_at_max_seconds_within_its_steps(backend, start):
    prompt, out = start
    r = refine_tokens(backend, prompt, out, {"strategy": "relaxed", "max_new_tokens": 12,
                                             "strategy_options": {"steps": 5000}, "budget": {"max_seconds": 0.3}})
    assert r.stats.stop_reason == "max_seconds"
    assert r.score >= r.initial_score


def test_smc_asked_for_a_sample_but_stopped_before_its_first_block(backend, start):
    prompt, out = start
    r = refine_tokens(backend, prompt, out, {"strategy": "power_smc", "max_new_tokens": 12,
                                             "strategy_options": {"output": "sample"},
                                             "budget": {"max_forward_tokens": 30}})
    assert r.stats.stop_reason == "max_forward_tokens"
    assert r.tokens == list(out)


def test_topk_larger_than_the_vocabulary(backend, start, tok):
    prompt, out = start
    assert tok.vocab_size < 64
    r = refine_tokens(backend, prompt, out, {"top_k": 40, "topk_store": 64, "max_new_tokens": 12,
                                             "budget": {"max_sweeps": 1}})
    assert r.score >= r.initial_score


@pytest.mark.parametrize("strategy", ["power", "power_smc", "coordinate"])
def test_a_prompt_that_fills_the_context_is_refused(backend, tok, strategy):
    prompt = (tok.encode("ab") * backend.max_length)[: backend.max_length]
    with pytest.raises(InputError, match="fills the context window"):
        refine_tokens(backend, prompt, [], {"strategy": strategy})


def test_a_budget_that_cuts_proposals_is_not_reported_as_converged(backend, start):
    prompt, out = start
    r = refine_tokens(backend, prompt, out, {"max_new_tokens": 12, "budget": {"max_forward_tokens": 40}})
    assert r.stats.stop_reason == "max_forward_tokens"
    full = refine_tokens(backend, prompt, out, {"max_new_tokens": 12, "budget": {"max_sweeps": 8}})
    assert full.stats.stop_reason == "converged"


def test_an_objective_that_is_nan_on_the_start_is_an_error(backend, start):
    import numpy as np

    from refine.objectives import Objective, Term

    class Broken(Term):
        name = "broken"

        def values(self, views):
            return np.full(len(views), math.nan)

    prompt, out = start
    config = RefineConfig(objective=Objective([(1.0, Broken())]), max_new_tokens=12)
    with pytest.raises(InputError, match=r"NaN on the initial output \(term\(s\) \['broken'\]"):
        refine_tokens(backend, prompt, out, config)


def test_refine_keeps_the_answer_it_decodes_within_max_new_tokens(backend):
    import refine

    longer = {"objective": {"mean": 1.0, "length": 0.5}, "budget": {"max_sweeps": 2}}
    capped = refine.refine(PROMPT, model=backend, chat=False, max_new_tokens=6, **longer)
    assert len(capped.initial_tokens) <= 6 and len(capped.tokens) <= 6
    wider = refine.refine(PROMPT, model=backend, chat=False, max_new_tokens=6, config={**longer, "max_new_tokens": 20})
    assert len(wider.tokens) > 6  # the config's own cap wins over the decode's


def test_a_config_pickles_and_copies():
    import copy
    import pickle

    config = RefineConfig(objective={"mean": 1.0, "coverage": {"words": ["dog", "park"]}},
                          strategy="power", strategy_options={"alpha": 2.0}, budget={"max_sweeps": 2})
    back = pickle.loads(pickle.dumps(config))
    assert back == config and back.to_dict() == config.to_dict()
    assert copy.deepcopy(config) is config and copy.copy(config) is config
