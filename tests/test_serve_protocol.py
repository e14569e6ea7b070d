"""The server's request reading without a server: bodies, sampling fields and refine options that must end in an
OpenAI-shaped 400 (never a 500), upstream responses of the wrong shape (502, not 500), and metrics that one odd
request cannot spoil."""

import types

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from vllm import SamplingParams  # noqa: E402

from refine.errors import ConfigError, UpstreamError  # noqa: E402
from refine.integrations.vllm import request_config  # noqa: E402
from refine.limits import RequestLimits  # noqa: E402
from refine.serve.protocol import RequestError, parse_body, sampling_params  # noqa: E402


@pytest.mark.parametrize("body", [
    {"max_tokens": 0}, {"n": 0}, {"temperature": 5}, {"top_p": 0}, {"repetition_penalty": float("inf")},
    {"max_tokens": 10, "min_tokens": 100}, {"vllm_xargs": {"refine_seed": 2 ** 64}},
])
def test_out_of_range_sampling_fields_are_400s(body):
    with pytest.raises(RequestError) as err:
        sampling_params({"prompt": "hi", **body})
    assert err.value.status == 400 and err.value.body()["error"]["type"] == "invalid_request_error"


def test_a_request_without_max_tokens_gets_the_default_lowered_to_the_cap():
    assert sampling_params({"prompt": "hi"}).max_tokens == 64
    assert sampling_params({"prompt": "hi"}, default_max_tokens=32).max_tokens == 32
    assert sampling_params({"prompt": "hi", "max_tokens": 7}, default_max_tokens=32).max_tokens == 7


def test_deeply_nested_json_is_a_400():
    with pytest.raises(RequestError, match="nests too deeply"):
        parse_body(b"[" * 200_000)


@pytest.mark.parametrize("xargs, message", [
    ({"refine_moves": 5}, r"`moves` has to be a list"),
    ({"refine_moves": [["a"]]}, r"`moves` has to be a list"),
    ({"refine_objective": [[1, "mean"]]}, r"holds \(weight, refine.objectives.Term\) pairs"),
    ({"refine": {"budget": "x"}, "refine_budget_max_sweeps": 2}, r"`budget` has to be a dict"),
    ({"refine_seed": -1}, r"`seed` has to be an integer >= 0"),
    ({"refine_objective": {"reference_ce": {"references": [5]}}}, r"`reference_ce.references` has to be"),
    ({"refine_require_roundtrip": "no"}, r"`require_roundtrip` has to be true or false"),
    ({"refine": False, "refine_top_k": 2}, r"turns refinement off, but the request also sets \['refine_top_k'\]"),
])
def test_malformed_refine_options_are_config_errors(xargs, message):
    params = SamplingParams(max_tokens=16, extra_args=xargs)
    with pytest.raises(ConfigError, match=message):
        request_config(params, plugins=(), limits=RequestLimits())


@pytest.mark.parametrize("field, value", [("stop", ["k"]), ("stop_token_ids", [5])])
def test_stop_rules_are_refused_with_refinement_and_kept_without(field, value):
    refined = SamplingParams(max_tokens=16, extra_args={"refine_top_k": 2}, **{field: value})
    with pytest.raises(ConfigError, match=f"`{field}` cannot be combined with refinement"):
        request_config(refined, plugins=(), limits=RequestLimits())
    assert request_config(SamplingParams(max_tokens=16, **{field: value}), plugins=(), limits=RequestLimits()) is None


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"choices": [{"token_ids": "ab"}]}', '{"choices": 5}'])
def test_an_upstream_answer_of_the_wrong_shape_is_an_upstream_error(text):
    from refine.backends.vllm.wire import request_output, response_object

    with pytest.raises(UpstreamError):
        request_output([1, 2], response_object(text), None)


def test_a_non_finite_gain_leaves_the_gain_metric_as_it_was():
    from refine.serve.metrics import ServerMetrics

    metrics = ServerMetrics()
    stats = types.SimpleNamespace(forward_tokens=10, seconds=0.5)
    metrics.observe_result(types.SimpleNamespace(edits=[1], gain=0.25, stats=stats))
    metrics.observe_result(types.SimpleNamespace(edits=[], gain=float("nan"), stats=stats))
    metrics.observe_result(types.SimpleNamespace(edits=[], gain=float("inf"), stats=stats))
    text = metrics.render().decode()
    assert "refine_objective_gain_total 0.25" in text and "refine_refinements_total 3.0" in text
