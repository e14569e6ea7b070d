"""Exceptions raised by refine. All derive from :class:`RefineError`."""

from __future__ import annotations


class RefineError(Exception):
    """Base class for every error refine raises on purpose."""


class ConfigError(RefineError, ValueError):
    """A configuration value is invalid. The message names the field, the value and the fix."""


class InputError(RefineError, ValueError):
    """The prompt, output, model or tokenizer handed to refine cannot be used as given."""


class RewardError(RefineError):
    """A user reward function raised or returned a non-finite value."""


class BudgetExhausted(RefineError):
    """Raised inside a search when the next evaluation would exceed the budget.

    The search driver catches it and returns the best hypothesis found so far, with :attr:`stop_reason` as
    the result's ``stats.stop_reason``.
    """

    stop_reason = "max_forward_tokens"


class DeadlineReached(BudgetExhausted):
    """Raised inside a search when its wall-clock limit passed during an evaluation (an engine that can stop a
    call part-way, such as vLLM's async engine, raises it); the search returns its best output so far."""

    stop_reason = "max_seconds"


class UpstreamError(RefineError):
    """A model server refine reaches over HTTP (``refine serve --upstream``) cannot be used: unreachable, refusing,
    misconfigured, or it failed a request."""


class MissingDependency(RefineError, ImportError):
    """An optional dependency is missing; the message says which command installs it."""


def require(module: str, install: str):
    """Import ``module`` or raise :class:`MissingDependency` saying ``pip install <install>``.

    >>> require("math", "math").sqrt(4.0)
    2.0
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"`{module}` is required for this feature but is not installed: pip install {install}"
        ) from exc
