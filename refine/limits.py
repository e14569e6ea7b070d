"""Server-side caps on what one request may ask for: :class:`RequestLimits`.

Every option that costs compute or memory has a cap. A request over a cap is refused with
:class:`LimitError` (a :class:`~refine.errors.ConfigError`: HTTP 400 from ``refine serve``) naming
the option, its value and the cap; nothing is clipped silently. Budget limits a request leaves
open (``max_forward_tokens``, ``max_seconds``) are set to the cap, so every refinement ends.

Some options are refused outright, whatever their value: ``scorer`` names a model to load from the
server's disk (or a Python object), which a request must never choose.

The caps are the serving operator's choice (``refine serve --cap-<name> N``); the defaults are
safe for a small model on a CPU.

Example:
    >>> limits = RequestLimits(max_sweeps=4)
    >>> limits.check_refine(RefineConfig(max_new_tokens=64, budget={"max_sweeps": 9}))
    Traceback (most recent call last):
    ...
    refine.limits.LimitError: `budget.max_sweeps` = 9 is over this server's cap of 4
    >>> limits.check_refine(RefineConfig(max_new_tokens=64)).budget.max_forward_tokens
    100000
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import RefineConfig
from .errors import ConfigError


class LimitError(ConfigError):
    """A request asks for more than a server cap allows.

    Attributes:
        param: the option, as the request names it (``"top_k"``, ``"budget.max_forward_tokens"``, ``"n"``).
        value: what the request asked for.
        cap: the server's cap.
    """

    def __init__(self, param: str, value: Any, cap: Any, what: str = "") -> None:
        shown = "None (no limit)" if value is None else repr(value)
        super().__init__(f"`{param}` = {shown}{what} is over this server's cap of {cap}")
        self.param, self.value, self.cap = param, value, cap


def _spec_size(value: Any) -> int:
    """Characters of the strings and items of the lists in a spec (dicts, lists, strings, numbers)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_spec_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return len(value) + sum(_spec_size(v) for v in value)
    return 0


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"the cap `{name}` has to be a positive number, but is {value!r}")


@dataclass(frozen=True)
class RequestLimits:
    """Caps on one request. Each field is the largest value a request may ask for.

    Attributes:
        body_bytes: size of the HTTP request body.
        prompt_tokens: tokens of one prompt (after the chat template).
        max_tokens: ``max_tokens`` of the request, and refine's ``max_new_tokens``.
        n: completions per request (``n`` times the number of prompts).
        top_k: refine's candidate tokens per position.
        topk_store: refine's tokens kept per position from each forward.
        max_positions: refine's positions per sweep (``None``, every position, is over any cap).
        block_size: refine's positions evaluated in one batched step.
        regen_extra_tokens: how much longer a regenerated suffix may grow.
        regen_beam: beam width of the ``regenerate_beam`` move (rows decoded per proposal).
        max_batch_tokens: refine's token positions per forward call (memory).
        max_sweeps: refine's ``budget.max_sweeps``.
        max_forward_tokens: refine's ``budget.max_forward_tokens`` (a request without one gets this).
        max_seconds: refine's ``budget.max_seconds`` (a request without one gets this).
        strategy_options: per cost-bearing strategy option, its cap; a request may set only the options listed
            here and those in :attr:`UNCAPPED_STRATEGY_OPTIONS`.
    """

    body_bytes: int = 1 << 20
    prompt_tokens: int = 2048
    max_tokens: int = 512
    n: int = 4
    top_k: int = 16
    topk_store: int = 64
    max_positions: int = 64
    block_size: int = 64
    regen_extra_tokens: int = 64
    regen_beam: int = 8
    max_batch_tokens: int = 16384
    max_sweeps: int = 8
    max_forward_tokens: int = 100_000
    max_seconds: float = 60.0
    strategy_options: Mapping[str, int] = field(
        default_factory=lambda: {"pool": 16, "steps": 16, "blocks": 8, "chains": 8, "proposals": 16})

    #: caps on :class:`RefineConfig` fields, by field name
    CONFIG_FIELDS = ("top_k", "topk_store", "max_positions", "block_size", "regen_extra_tokens", "regen_beam",
                     "max_batch_tokens")
    #: strategy options that bear no cost (the strategy validates them): a request may set them freely
    UNCAPPED_STRATEGY_OPTIONS = ("alpha", "temperature", "cut", "target", "output")
    #: caps on :class:`~refine.config.Budget` fields that a request must not leave open
    BUDGET_FILLED = ("max_forward_tokens", "max_seconds")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "strategy_options":
                _positive(f.name, getattr(self, f.name))
        if not isinstance(self.strategy_options, Mapping):
            raise ConfigError(f"the cap `strategy_options` has to be a dict, but is {self.strategy_options!r}")
        for name, cap in self.strategy_options.items():
            _positive(f"strategy_options.{name}", cap)

    def base_options(self) -> dict[str, Any]:
        """Options that lie under a request's own (and the server's defaults): refine's defaults lowered to the
        caps, and the open budget limits set to them. A request is refused only for what it asks for itself.

        >>> RequestLimits(max_sweeps=2, top_k=16).base_options()["budget"]
        {'max_sweeps': 2, 'max_forward_tokens': 100000, 'max_seconds': 60.0}
        """
        library = RefineConfig()
        opts: dict[str, Any] = {}
        for name in self.CONFIG_FIELDS:
            value, cap = getattr(library, name), getattr(self, name)
            if value is None or value > cap:
                opts[name] = cap
        budget: dict[str, Any] = {}
        if library.budget.max_sweeps > self.max_sweeps:
            budget["max_sweeps"] = self.max_sweeps
        budget.update({name: getattr(self, name) for name in self.BUDGET_FILLED})
        opts["budget"] = budget
        return opts

    # ------------------------------------------------------------------ checks

    def check_request(self, *, max_tokens: int, choices: int, prompt_tokens: int) -> None:
        """Check a request's sampling side: ``max_tokens``, completions (``n`` x prompts) and one prompt's length."""
        if max_tokens > self.max_tokens:
            raise LimitError("max_tokens", max_tokens, self.max_tokens)
        if choices > self.n:
            raise LimitError("n", choices, self.n, " completions (n x prompts)")
        if prompt_tokens > self.prompt_tokens:
            raise LimitError("prompt", prompt_tokens, self.prompt_tokens, " tokens")

    #: :class:`RefineConfig` fields no request may set, whatever their value
    REFUSED_FIELDS = ("scorer",)
    #: at most this many ``phrases`` per request (each adds two proposals at every spot of a sweep's first block),
    #: of at most this many characters each
    PHRASES = 8
    PHRASE_CHARS = 200
    #: at most this many ``wrap`` pairs per request, of at most this many characters per pair (a restated
    #: request before the answer is longer than a phrase)
    WRAPS = 4
    WRAP_CHARS = 1000
    #: at most this many characters and list items in the objective's term parameters together (``coverage``
    #: words, ``reference_ce`` references), and at most this many items in one list: scoring reads them for every
    #: candidate
    OBJECTIVE_SIZE = 20_000
    OBJECTIVE_ITEMS = 32

    def check_refine(self, config: RefineConfig) -> RefineConfig:
        """Check a request's refine options; return them with open budget limits set to the caps.

        Fails closed on :attr:`REFUSED_FIELDS`: a config that sets one is refused, whoever set it (a server's own
        defaults included: serving with a scorer is not supported).
        """
        for name in self.REFUSED_FIELDS:
            if getattr(config, name) is not None:
                raise ConfigError(f"`{name}` cannot be set on this server (it would load a model from the server's "
                                  f"disk): refine with a scorer through the library or `refine run --scorer`")
        if callable(config.forbid) or config.forbid:
            raise ConfigError("`forbid` cannot be set on this server (a request would have the server scan its "
                              "vocabulary with the request's rule): refine with `forbid` through the library or "
                              "`refine run --forbid`")
        if len(config.phrases) > self.PHRASES:
            raise LimitError("phrases", len(config.phrases), self.PHRASES, " phrases")
        longest = max((len(p) for p in config.phrases), default=0)
        if longest > self.PHRASE_CHARS:
            raise LimitError("phrases", longest, self.PHRASE_CHARS, " characters in a phrase")
        spec = config.build_objective().to_spec()
        size = _spec_size(spec)
        if size > self.OBJECTIVE_SIZE:
            raise LimitError("objective", size, self.OBJECTIVE_SIZE, " characters and items in its parameters")
        for term, params in spec.items():
            for name, value in params.items():
                if isinstance(value, (list, tuple)) and len(value) > self.OBJECTIVE_ITEMS:
                    raise LimitError(f"objective.{term}.{name}", len(value), self.OBJECTIVE_ITEMS, " items")
        if len(config.wrap) > self.WRAPS:
            raise LimitError("wrap", len(config.wrap), self.WRAPS, " pairs")
        longest = max((len(b) + len(a) for b, a in config.wrap), default=0)
        if longest > self.WRAP_CHARS:
            raise LimitError("wrap", longest, self.WRAP_CHARS, " characters in a pair")
        for name in self.CONFIG_FIELDS:
            value, cap = getattr(config, name), getattr(self, name)
            if value is None or value > cap:
                raise LimitError(name, value, cap)
        if config.max_new_tokens is None or config.max_new_tokens > self.max_tokens:
            raise LimitError("max_new_tokens", config.max_new_tokens, self.max_tokens)
        budget = config.budget
        if budget.max_sweeps > self.max_sweeps:
            raise LimitError("budget.max_sweeps", budget.max_sweeps, self.max_sweeps)
        filled = {}
        for name in self.BUDGET_FILLED:
            value, cap = getattr(budget, name), getattr(self, name)
            if value is None:
                filled[name] = cap
            elif value > cap:
                raise LimitError(f"budget.{name}", value, cap)
        for name, value in config.strategy_options.items():
            if name in self.UNCAPPED_STRATEGY_OPTIONS and name not in self.strategy_options:
                continue
            cap = self.strategy_options.get(name)
            if cap is None:
                raise ConfigError(f"`strategy_options.{name}` cannot be set on this server: it caps only "
                                  f"{sorted(self.strategy_options)} (`refine serve --cap-strategy-options`)")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value > cap:
                raise LimitError(f"strategy_options.{name}", value, cap)
        if not filled:
            return config
        return config.replace(budget=dataclasses.replace(budget, **filled))
