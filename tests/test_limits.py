"""Server caps (RequestLimits): every cost-bearing option is refused over its cap, open budgets are filled."""

import pytest

from refine import ConfigError, RefineConfig
from refine.limits import LimitError, RequestLimits

LIMITS = RequestLimits(max_tokens=100, n=3, prompt_tokens=50, top_k=5, topk_store=20, max_positions=10,
                       block_size=6, regen_extra_tokens=7, regen_beam=3, max_batch_tokens=1000, max_sweeps=2,
                       max_forward_tokens=5000, max_seconds=3.0,
                       strategy_options={"pool": 4, "steps": 5, "blocks": 4, "chains": 2, "proposals": 3})
OK = dict(max_new_tokens=100, top_k=5, topk_store=20, max_positions=10, block_size=6, regen_extra_tokens=7,
          regen_beam=3, max_batch_tokens=1000, budget={"max_sweeps": 2, "max_forward_tokens": 5000, "max_seconds": 3.0})


def test_options_at_the_caps_pass_unchanged():
    config = RefineConfig(**OK)
    assert LIMITS.check_refine(config) is config


@pytest.mark.parametrize("param, change", [
    ("top_k", {"top_k": 6}),
    ("topk_store", {"topk_store": 21}),
    ("max_positions", {"max_positions": 11}),
    ("max_positions", {"max_positions": None}),  # every position: over any cap
    ("block_size", {"block_size": 7}),
    ("regen_extra_tokens", {"regen_extra_tokens": 8}),
    ("regen_beam", {"regen_beam": 4}),
    ("max_batch_tokens", {"max_batch_tokens": 1001}),
    ("max_new_tokens", {"max_new_tokens": 101}),
    ("max_new_tokens", {"max_new_tokens": None}),
    ("budget.max_sweeps", {"budget": {**OK["budget"], "max_sweeps": 3}}),
    ("budget.max_forward_tokens", {"budget": {**OK["budget"], "max_forward_tokens": 5001}}),
    ("budget.max_seconds", {"budget": {**OK["budget"], "max_seconds": 3.5}}),
    ("strategy_options.pool", {"strategy": "best_first", "strategy_options": {"pool": 5}}),
    ("strategy_options.steps", {"strategy": "power", "strategy_options": {"steps": 6}}),
    ("strategy_options.blocks", {"strategy": "power", "strategy_options": {"blocks": 5}}),
    ("strategy_options.chains", {"strategy": "power", "strategy_options": {"chains": 3}}),
    ("strategy_options.proposals", {"strategy": "power", "strategy_options": {"proposals": 4}}),
])
def test_each_refine_option_over_its_cap_is_refused_naming_option_and_cap(param, change):
    config = RefineConfig(**{**OK, **change})
    with pytest.raises(LimitError) as info:
        LIMITS.check_refine(config)
    assert info.value.param == param
    assert f"`{param}`" in str(info.value) and "cap of" in str(info.value)
    assert str(info.value.cap) in str(info.value)


def test_open_budget_limits_are_set_to_the_caps():
    config = RefineConfig(**{**OK, "budget": {"max_sweeps": 1}})
    checked = LIMITS.check_refine(config)
    assert checked.budget.max_forward_tokens == 5000 and checked.budget.max_seconds == 3.0
    assert checked.budget.max_sweeps == 1
    assert config.budget.max_forward_tokens is None  # the caller's config is not modified


def test_strategy_options_without_a_cap_cannot_be_set():
    limits = RequestLimits(strategy_options={})
    config = RefineConfig(**{**OK, "strategy": "best_first", "strategy_options": {"pool": 2}})
    with pytest.raises(ConfigError, match="strategy_options.pool"):
        limits.check_refine(config)


@pytest.mark.parametrize("kwargs, param", [
    (dict(max_tokens=101, choices=1, prompt_tokens=1), "max_tokens"),
    (dict(max_tokens=10, choices=4, prompt_tokens=1), "n"),
    (dict(max_tokens=10, choices=1, prompt_tokens=51), "prompt"),
])
def test_sampling_side_caps(kwargs, param):
    with pytest.raises(LimitError) as info:
        LIMITS.check_request(**kwargs)
    assert info.value.param == param
    LIMITS.check_request(max_tokens=100, choices=3, prompt_tokens=50)  # at the caps: fine


@pytest.mark.parametrize("bad", [{"top_k": 0}, {"max_seconds": -1.0}, {"n": True}, {"strategy_options": {"pool": 0}}])
def test_caps_themselves_are_validated(bad):
    with pytest.raises(ConfigError):
        RequestLimits(**bad)


def test_base_options_lower_library_defaults_to_the_caps():
    """A request that never mentions an option is not refused for refine's default of it."""
    low = RequestLimits(max_sweeps=1, top_k=2, max_positions=4, block_size=2)
    base = low.base_options()
    assert base["top_k"] == 2 and base["max_positions"] == 4 and base["block_size"] == 2
    assert base["budget"] == {"max_sweeps": 1, "max_forward_tokens": 100_000, "max_seconds": 60.0}
    config = RefineConfig.from_dict({**base, "max_new_tokens": 64})
    assert low.check_refine(config) is config
    assert "top_k" not in RequestLimits().base_options()  # defaults within the caps stay as they are


def test_power_options_within_caps_and_its_costless_options_pass():
    """``power``'s cost-bearing options are capped; alpha, temperature, cut, target and output cost nothing more
    and pass uncapped (the strategy validates them)."""
    options = {"steps": 5, "blocks": 4, "chains": 2, "proposals": 3, "alpha": 8.0, "temperature": 0.5,
               "cut": "entropy", "target": "objective", "output": "sample"}
    config = RefineConfig(**{**OK, "strategy": "power", "strategy_options": options})
    assert LIMITS.check_refine(config) is config
    default = RequestLimits()
    assert all(name in default.strategy_options for name in ("steps", "blocks", "chains", "proposals"))


@pytest.mark.parametrize("scorer", ["/etc/passwd", "judge-model", "~/.cache/x.gguf"])
def test_a_scorer_is_refused_whatever_it_names(scorer):
    with pytest.raises(ConfigError, match=r"^`scorer` cannot be set on this server"):
        LIMITS.check_refine(RefineConfig(**OK, scorer=scorer))



def test_objective_parameters_are_capped_in_size():
    many = RefineConfig(**OK, objective={"mean": 1, "reference_ce": {"references": ["ab"] * 33}})
    with pytest.raises(LimitError, match=r"`objective.reference_ce.references` = 33 items is over this server's cap "
                                         r"of 32"):
        LIMITS.check_refine(many)
    long = RefineConfig(**OK, objective={"mean": 1, "coverage": {"words": ["x" * 20_001]}})
    with pytest.raises(LimitError, match=r"`objective` = 20002 characters and items in its parameters"):
        LIMITS.check_refine(long)
    fine = RefineConfig(**OK, objective={"mean": 1, "coverage": {"words": ["dog", "park"]}})
    assert LIMITS.check_refine(fine).build_objective().to_spec()["coverage"]["words"] == ["dog", "park"]
