import pytest

from refine import Budget, RefineConfig
from refine.errors import ConfigError


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"moves": ()}, "moves"),
        ({"moves": ("teleport",)}, "moves"),
        ({"moves": ("substitute", "substitute")}, "moves"),
        ({"strategy": "annealing"}, "strategy"),
        ({"positions": "random"}, "positions"),
        ({"length": "short"}, "length"),
        ({"length": "fixed", "moves": ("insert",)}, "moves"),
        ({"tolerance": -1}, "tolerance"),
        ({"repeat_guard": 0}, "repeat_guard"),
        ({"repeat_guard": 2.5}, "repeat_guard"),
        ({"budget": {"max_forward_tokens": 0}}, "budget.max_forward_tokens"),
        ({"budget": {"max_sweeps": 0}}, "budget.max_sweeps"),
        ({"budget": {"max_seconds": 0}}, "budget.max_seconds"),
        ({"budget": {"nonsense": 1}}, "budget"),
        ({"max_batch_tokens": 0}, "max_batch_tokens"),
        ({"topk_store": 2, "top_k": 3}, "topk_store"),
        ({"reward": "not callable"}, "reward.fn"),
    ],
)
def test_invalid_values_raise_with_field_name(kw, field):
    with pytest.raises(ConfigError) as info:
        RefineConfig(**kw)
    assert f"`{field}" in str(info.value)


def test_from_dict_rejects_unknown_and_round_trips():
    with pytest.raises(ConfigError, match="top_kk"):
        RefineConfig.from_dict({"top_kk": 3})
    c = RefineConfig.from_dict({"objective": {"sum": 1, "length": 0.2}, "moves": "regenerate,delete",
                                "budget": {"max_sweeps": 2}})
    assert c.moves == ("regenerate", "delete") and c.budget == Budget(max_sweeps=2)
    d = c.to_dict()
    c2 = RefineConfig.from_dict({k: v for k, v in d.items()})
    assert c2.to_dict() == d


def test_replace_validates():
    c = RefineConfig()
    assert c.replace(top_k=5).top_k == 5
    with pytest.raises(ConfigError):
        c.replace(top_k=-1)
    with pytest.raises(ConfigError, match="colour"):
        c.replace(colour="red")
