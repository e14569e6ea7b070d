"""Checks of ``strategy_options`` shared by the strategies: each returns the value or raises a
:class:`~refine.errors.ConfigError` naming ``strategy_options.<name>``, the rule and the value."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError


def number(name: str, value: Any, low: float, inf_ok: bool = False, low_ok: bool = False) -> float:
    """A finite number above ``low`` (``low`` itself too with ``low_ok``, ``inf`` too with ``inf_ok``)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and (math.isfinite(value) or (inf_ok and value == math.inf)) and (value >= low if low_ok else value > low))
    if not ok:
        extra = " (inf allowed)" if inf_ok else ""
        raise ConfigError(f"`strategy_options.{name}` has to be a number {'>=' if low_ok else '>'} {low}{extra}, "
                          f"but is {value!r}")
    return float(value)


def count(name: str, value: Any, low: int = 1) -> int:
    """An int (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"`strategy_options.{name}` has to be an int >= {low}, but is {value!r}")
    return value


def rate(name: str, value: Any) -> float:
    """A number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"`strategy_options.{name}` has to be a number in [0, 1], but is {value!r}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    """True or False."""
    if not isinstance(value, bool):
        raise ConfigError(f"`strategy_options.{name}` has to be true or false, but is {value!r}")
    return value


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    """One of ``options``."""
    if value not in options:
        raise ConfigError(f"`strategy_options.{name}` has to be one of {options}, but is {value!r}")
    return value
