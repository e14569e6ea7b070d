"""Validated options for a refinement: :class:`Budget` and :class:`RefineConfig`.

Both are normalised first, then verified; an invalid value raises
:class:`~refine.errors.ConfigError` naming the field, the value and the fix.
Both round-trip through plain dicts (:meth:`RefineConfig.from_dict`), which is how
the CLI and the vLLM ``extra_args`` pass them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from types import MappingProxyType
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping

from .backends.base import Backend
from . import forbid as forbid_mod
from . import phrases as phrases_mod
from .degeneration import DEFAULT_N, ECHO_N
from .errors import ConfigError
from .objectives import Objective
from .moves import MOVES
from .registry import only_plugins
from .strategy import STRATEGIES, Strategy

LENGTH_MODES = ("free", "keep_eos", "fixed")
POSITION_ORDERS = ("margin", "entropy", "left_to_right")


def _frozen(value: Any) -> Any:
    """A read-only copy of a spec made of dicts and lists (dicts become read-only views, lists tuples); other
    values as they are."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    """``value`` with its read-only dict views as plain dicts (what pickle can write)."""
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_thawed(v) for v in value)
    return value


def _config_from_fields(fields: dict[str, Any]) -> "RefineConfig":
    return RefineConfig(**fields)


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"`{name}` has to be true or false, but is {value!r}")


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"`{name}` has to be a strictly positive integer{' or None' if allow_none else ''}, "
                          f"but is {value!r}")


@dataclass(frozen=True)
class Budget:
    """Limits on one refinement. The search stops at the first limit reached and returns the best output so far.

    ``max_forward_tokens`` is a hard limit: an evaluation that could exceed it is shrunk or skipped, never run.
    ``max_seconds`` is checked before each evaluation and, on backends that can stop a call part-way (the HF
    backend between two decoding steps, vLLM's async engine), during one.

    Attributes:
        max_sweeps: passes over the output's positions.
        max_forward_tokens: token positions run through the model (padding and rejected candidates included),
            including scoring the initial output. ``None``: unlimited.
        max_seconds: wall-clock limit. ``None``: unlimited.
        patience: stop after this many consecutive evaluations without an accepted edit. ``None``: no limit.
    """

    max_sweeps: int = 3
    max_forward_tokens: int | None = None
    max_seconds: float | None = None
    patience: int | None = None

    def __post_init__(self) -> None:
        _positive_int("budget.max_sweeps", self.max_sweeps)
        _positive_int("budget.max_forward_tokens", self.max_forward_tokens, allow_none=True)
        _positive_int("budget.patience", self.patience, allow_none=True)
        if self.max_seconds is not None:
            if isinstance(self.max_seconds, bool) or not isinstance(self.max_seconds, (int, float)) \
                    or not math.isfinite(self.max_seconds) or self.max_seconds <= 0:
                raise ConfigError(f"`budget.max_seconds` has to be a positive number or None, "
                                  f"but is {self.max_seconds!r}")
            object.__setattr__(self, "max_seconds", float(self.max_seconds))


@dataclass(frozen=True)
class RefineConfig:
    """Options of a refinement. Immutable: :meth:`replace` gives a validated copy with changes.

    The config only describes a refinement; each search builds its own objective and strategy from it
    (:meth:`build_objective`, :meth:`build_strategy`), so nothing a search binds or mutates lives here.

    Attributes:
        objective: what to maximise: a term name (``"mean"``, ``"sum"``, ``"gnmt"``), a dict
            ``{name: weight or {params}}``, or an :class:`~refine.objectives.Objective`. The default,
            mean log-probability plus a repetition penalty, is length-normalised without rewarding the
            repetitive padding that plain ``"mean"`` invites.
        reward: optional ``fn(text) -> float`` added to the objective with ``reward_weight``.
        reward_weight: weight of ``reward``.
        strategy: search strategy name (``"coordinate"``) or ``"module:Class"``.
        moves: move names tried at each position, in order.
        top_k: candidate tokens per position, taken from the model's own top-k at that position.
        positions: visiting order: ``"margin"`` (least confident first), ``"entropy"`` (highest first),
            ``"left_to_right"``.
        max_positions: positions tried per sweep (the first ones in visiting order). ``None``: all.
        block_size: positions evaluated together in one batched step; the best improving candidate of the
            block is accepted.
        length: ``"free"`` (any move; EOS may be proposed), ``"keep_eos"`` (EOS is never proposed nor removed
            by an edit; regenerated suffixes still end where the model ends them), ``"fixed"`` (the token count
            never changes: no insert/delete, regenerated suffixes keep the old length).
        regen_extra_tokens: a regenerated suffix may be this many tokens longer than the one it replaces.
        regen_beam: beam width of the ``regenerate_beam`` move's re-decoding (each of its proposals decodes this
            many rows per step).
        max_new_tokens: hard cap on the output length during refinement. ``None``: the model's context window.
        min_tokens: candidates with fewer content tokens (EOS excluded) are discarded.
        exclude_special: never propose special tokens (EOS excepted, see ``length``).
        forbid: text no proposal may write: strings (a token whose text contains one is forbidden) or a
            predicate on a token's text. Edits never put such tokens in, re-decoded and sampled continuations
            are drawn without them, and positions holding one are visited first (:mod:`refine.forbid`).
        phrases: text an edit may write whole (a closing phrase, a marker, a word to include), which the
            model's top-k would not propose one token at a time: the ``phrase`` move (added to ``moves`` when
            this is set) proposes each at the start, after each sentence or line and at the end, inserted or with
            the rest re-decoded after it (:mod:`refine.phrases`). Used by the strategies that take moves
            (coordinate, best-first, hybrid, population).
        wrap: text to put around the whole output in one edit, as ``[before, after]`` pairs: quotation marks
            (``[['"', '"']]``), a code fence, a restated request before the answer (``[["Q: ...\\n\\n", ""]]``).
            The ``phrase`` move proposes each pair once per output, the text tokenized afresh; a wrapped
            candidate must keep at least half of the initial answer's characters inside the wrap
            (:mod:`refine.phrases`).
            Used where ``phrases`` are.
        require_roundtrip: drop candidates whose text does not re-tokenize to the same ids.
        tolerance: an edit is accepted only if it raises the objective by more than this.
        repeat_guard: the degeneration guard: a candidate whose decoded text repeats more word n-grams of this
            size, or more line patterns, than the output it would replace is refused whatever its score
            (:mod:`refine.degeneration`). Small models score their own loops as fluent, so no objective term
            alone rules them out. ``None`` turns the guard off.
        echo_guard: the echo guard: a candidate that quotes more spans of this many words of the prompt than the
            output it would replace is refused whatever its score (a small model finds copying its instructions
            back likelier than answering them). ``None`` turns it off (for tasks that ask to repeat the prompt).
        prune_margin: a re-decoded suffix stops early (every few tokens) when its partial output scores worse
            than the current output cut at the same length by more than this. A heuristic that only saves
            compute: accepted edits are always complete and exactly scored. ``None`` decodes every suffix to
            the end. Ignored when the objective reads text (rewards, coverage).
        prune_keep: rank-based relief from ``prune_margin``: a suffix that falls behind by more than the margin
            is still decoded on while its lead over the current output (usually a deficit) ranks among the
            ``prune_keep`` best of the suffixes decoded together, as a beam of that width would keep it.
            Paths that pay for an unlikely token early and recover later survive. ``None``: margin only.
        budget: a :class:`Budget` or a dict of its fields.
        seed: random seed of stochastic strategies (``power``: cut positions, acceptance draws, sampling seeds;
            ``power_smc``: sampling seeds and resampling draws);
            coordinate descent and best-first are deterministic.
        max_batch_tokens: memory limit: token positions per forward call (rows x length).
        topk_store: tokens kept per position from each forward (>= ``top_k``); extra ones absorb filtering.
        strategy_options: extra keyword options for the strategy.
        scorer: a second model that computes the objective's terms while the proposals (top-k tokens, margins,
            re-decodings) stay the generator's: a local model folder or ``.gguf`` path (loaded with
            transformers through :mod:`refine.models`) or a :class:`~refine.backends.base.Backend`. The
            candidate's text is re-tokenized with the scorer's tokenizer (its EOS appended when the candidate
            ended), so token-level terms count the scorer's tokens; ``prune_margin`` is ignored (the
            generator's partial scores do not predict the scorer's). Both models' forward tokens count in the
            budget and in the statistics (:mod:`refine.scorer`). ``None``: the generator scores itself.
    """

    objective: Any = field(default_factory=lambda: {"mean": 1.0, "repetition": 1.0})
    reward: Callable[[str], float] | None = None
    reward_weight: float = 1.0
    strategy: str = "coordinate"
    moves: tuple[str, ...] = ("regenerate",)
    top_k: int = 3
    positions: str = "margin"
    max_positions: int | None = 8
    block_size: int = 8
    length: str = "free"
    regen_extra_tokens: int = 16
    regen_beam: int = 4
    max_new_tokens: int | None = None
    min_tokens: int = 1
    exclude_special: bool = True
    forbid: Any = ()
    phrases: Any = ()
    wrap: Any = ()
    require_roundtrip: bool = False
    tolerance: float = 1e-4
    repeat_guard: int | None = DEFAULT_N
    echo_guard: int | None = ECHO_N
    prune_margin: float | None = 0.0
    prune_keep: int | None = None
    budget: Budget = field(default_factory=Budget)
    seed: int = 0
    max_batch_tokens: int = 4096
    topk_store: int = 16
    strategy_options: dict[str, Any] = field(default_factory=dict)
    scorer: Any = None

    def __post_init__(self) -> None:
        def normalise(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.budget, Mapping):
            unknown = set(self.budget) - {f.name for f in dataclasses.fields(Budget)}
            if unknown:
                raise ConfigError(f"`budget` has unknown fields {sorted(unknown)}; "
                                  f"valid: {[f.name for f in dataclasses.fields(Budget)]}")
            normalise("budget", Budget(**self.budget))
        if isinstance(self.moves, str):
            normalise("moves", tuple(m.strip() for m in self.moves.split(",") if m.strip()))
        if not isinstance(self.moves, (list, tuple)) or not all(isinstance(m, str) for m in self.moves):
            raise ConfigError(f"`moves` has to be a list of move names (or one comma-separated string), "
                              f"but is {self.moves!r}")
        normalise("moves", tuple(self.moves))
        if isinstance(self.objective, (Mapping, list, tuple)):
            normalise("objective", _frozen(self.objective))  # read-only: the config is validated once
        normalise("forbid", forbid_mod.normalise(self.forbid))
        normalise("phrases", phrases_mod.normalise(self.phrases))
        normalise("wrap", phrases_mod.normalise_wraps(self.wrap))
        if isinstance(self.scorer, os.PathLike):
            normalise("scorer", os.fspath(self.scorer))
        if not isinstance(self.strategy_options, Mapping):
            raise ConfigError(f"`strategy_options` has to be a dict, but is {self.strategy_options!r}")
        normalise("strategy_options", MappingProxyType(dict(self.strategy_options)))  # read-only view
        # verify
        if not isinstance(self.budget, Budget):
            raise ConfigError(f"`budget` has to be a refine.Budget or a dict, but is {self.budget!r}")
        self.build_objective()  # a bad objective or reward fails here
        if not self.moves:
            raise ConfigError("`moves` has to name at least one move, e.g. ('regenerate', 'substitute')")
        if len(set(self.moves)) != len(self.moves):
            raise ConfigError(f"`moves` lists a move twice: {self.moves}")
        for m in self.moves:
            MOVES.get(m, field="moves")
        _positive_int("top_k", self.top_k)
        _positive_int("topk_store", self.topk_store)
        if self.topk_store < self.top_k:
            raise ConfigError(f"`topk_store` ({self.topk_store}) has to be >= `top_k` ({self.top_k})")
        if self.positions not in POSITION_ORDERS:
            raise ConfigError(f"`positions` has to be one of {POSITION_ORDERS}, but is {self.positions!r}")
        _positive_int("max_positions", self.max_positions, allow_none=True)
        _positive_int("block_size", self.block_size)
        if self.length not in LENGTH_MODES:
            raise ConfigError(f"`length` has to be one of {LENGTH_MODES}, but is {self.length!r}")
        if "phrase" in self.moves and not (self.phrases or self.wrap):
            raise ConfigError("`moves` names 'phrase', which writes the text of `phrases` and `wrap`, but both "
                              "are empty")
        if self.length == "fixed":
            for name in ("phrases", "wrap"):
                if getattr(self, name):
                    raise ConfigError(f"`{name}` are written whole, which changes the length that `length='fixed'` "
                                      "keeps; drop them or use length='free'")
            bad = [m for m in self.moves if m in ("insert", "delete")]
            if bad:
                raise ConfigError(f"`moves` {bad} change the length, which `length='fixed'` forbids; "
                                  "drop them or use length='free'")
        if isinstance(self.regen_extra_tokens, bool) or not isinstance(self.regen_extra_tokens, int) \
                or self.regen_extra_tokens < 0:
            raise ConfigError(f"`regen_extra_tokens` has to be an integer >= 0, but is {self.regen_extra_tokens!r}")
        _positive_int("regen_beam", self.regen_beam)
        _positive_int("max_new_tokens", self.max_new_tokens, allow_none=True)
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise ConfigError(f"`min_tokens` has to be an integer >= 0, but is {self.min_tokens!r}")
        _flag("exclude_special", self.exclude_special)
        _flag("require_roundtrip", self.require_roundtrip)
        if isinstance(self.tolerance, bool) or not (isinstance(self.tolerance, (int, float))
                                                    and math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ConfigError(f"`tolerance` has to be a finite number >= 0, but is {self.tolerance!r}")
        _positive_int("repeat_guard", self.repeat_guard, allow_none=True)
        _positive_int("echo_guard", self.echo_guard, allow_none=True)
        if self.prune_margin is not None and not (isinstance(self.prune_margin, (int, float))
                                                   and math.isfinite(self.prune_margin)):
            raise ConfigError(f"`prune_margin` has to be a finite number or None, but is {self.prune_margin!r}")
        _positive_int("prune_keep", self.prune_keep, allow_none=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"`seed` has to be an integer >= 0, but is {self.seed!r}")
        _positive_int("max_batch_tokens", self.max_batch_tokens)
        if not (self.scorer is None or isinstance(self.scorer, Backend)
                or (isinstance(self.scorer, str) and self.scorer.strip())):
            raise ConfigError(f"`scorer` has to be a local model folder or .gguf path, or a refine Backend "
                              f"(refine.backends.hf.HFBackend(model, tokenizer)), or None, but is {self.scorer!r}")
        self.build_strategy()  # a strategy checks its options on construction: a bad option fails here

    def build_strategy(self) -> Strategy:
        """A new strategy object for one search (strategies keep per-search state)."""
        cls = STRATEGIES.get(self.strategy, field="strategy")
        try:
            return cls(**self.strategy_options)
        except TypeError as exc:
            raise ConfigError(f"`strategy_options` {dict(self.strategy_options)} do not fit strategy "
                              f"{self.strategy!r}: {exc}") from exc

    def build_objective(self) -> Objective:
        """A new objective for one search (a search binds it to its tokenizer): its terms are copies, so that
        searches that share a config (or an :class:`Objective` given as ``objective``) bind terms of their own."""
        obj = Objective.from_spec(self.objective)
        obj = Objective([(w, copy.copy(t)) for w, t in obj.terms])
        if self.reward is not None:
            from .objectives import Reward

            if isinstance(self.reward_weight, bool) or not (isinstance(self.reward_weight, (int, float))
                                                            and math.isfinite(self.reward_weight)):
                raise ConfigError(f"`reward_weight` has to be a finite number, but is {self.reward_weight!r}")
            obj = Objective(list(obj.terms) + [(self.reward_weight, Reward(self.reward))])
        return obj

    @property
    def objective_fn(self) -> Objective:
        """A new objective built from ``objective`` (and ``reward``); same as :meth:`build_objective`."""
        return self.build_objective()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (callables appear by name)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["budget"] = dataclasses.asdict(self.budget)
        d["moves"] = list(self.moves)
        d["objective"] = self.build_objective().to_spec()
        d["strategy_options"] = dict(self.strategy_options)
        d["forbid"] = forbid_mod.describe(self.forbid)
        d["phrases"] = list(self.phrases)
        d["wrap"] = [list(w) for w in self.wrap]
        d["reward"] = None if self.reward is None else getattr(self.reward, "__name__", repr(self.reward))
        if isinstance(self.scorer, Backend):  # a loaded model appears by its backend's name
            d["scorer"] = getattr(self.scorer, "name", type(self.scorer).__name__)
        return d

    def __reduce__(self):
        """Pickled as its fields (read-only views as dicts), validated again when loaded: a config travels to
        worker processes."""
        return _config_from_fields, ({f.name: _thawed(getattr(self, f.name)) for f in dataclasses.fields(self)},)

    def __copy__(self) -> "RefineConfig":
        return self  # immutable

    def __deepcopy__(self, memo: dict) -> "RefineConfig":
        return self

    def replace(self, **changes: Any) -> "RefineConfig":
        """A validated copy with some fields changed (unknown names raise :class:`ConfigError`)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ConfigError(f"unknown refine option(s) {sorted(unknown)}; valid options: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "RefineConfig" | None, *,
                  plugins: Collection[str] | None = None) -> "RefineConfig":
        """Build from a dict, rejecting unknown keys (a typo must not pass silently).

        Args:
            d: the options (a :class:`RefineConfig` is returned as it is).
            plugins: the ``"module:Class"`` import paths the options may name. ``None`` (the default) allows any:
                options written by the caller are trusted like the caller's own code. Options that arrive over
                a network must be built with an explicit list (usually empty): they can then name only
                registered strategies, moves and terms, and any other path raises :class:`ConfigError` before
                its module is imported.

        >>> RefineConfig.from_dict({"strategy": "os:system"}, plugins=[])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        refine.errors.ConfigError: `strategy`='os:system' is an import path, which is not accepted here: name a registered strategy (...)
        """
        if d is None:
            return cls()
        if isinstance(d, RefineConfig):
            return d
        if not isinstance(d, Mapping):
            raise ConfigError(f"refine options have to be a dict or RefineConfig, but are {d!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown refine option(s) {sorted(unknown)}; valid options: {sorted(names)}")
        if plugins is None:
            return cls(**dict(d))
        with only_plugins(plugins):
            return cls(**dict(d))


def plugin_paths(options: Mapping[str, Any] | None) -> set[str]:
    """The ``"module:Class"`` import paths that refine options name (in ``strategy``, ``moves``, ``objective``).

    A server trusts the paths of its own default options (:meth:`RefineConfig.from_dict`'s ``plugins``).

    >>> sorted(plugin_paths({"strategy": "pkg.mod:Beam", "moves": "regenerate,pkg.mod:Swap", "objective": "mean"}))
    ['pkg.mod:Beam', 'pkg.mod:Swap']
    """
    if not options:
        return set()
    names: list[Any] = [options.get("strategy")]
    moves = options.get("moves") or ()
    names += moves.split(",") if isinstance(moves, str) else list(moves)
    objective = options.get("objective")
    if isinstance(objective, str):
        names.append(objective)
    elif isinstance(objective, Mapping):
        names += list(objective)
    return {n.strip() for n in names if isinstance(n, str) and ":" in n}


def merge_options(defaults: Mapping[str, Any] | None, own: Mapping[str, Any] | None) -> dict[str, Any]:
    """``own`` options over ``defaults``; their ``budget`` dicts are merged field by field.

    >>> merge_options({"top_k": 3, "budget": {"max_sweeps": 2}}, {"budget": {"max_seconds": 5}})
    {'top_k': 3, 'budget': {'max_sweeps': 2, 'max_seconds': 5}}
    """
    merged = {**(defaults or {}), **(own or {})}
    budgets = [b for b in ((defaults or {}).get("budget"), (own or {}).get("budget")) if b is not None]
    if len(budgets) == 2:
        as_dict = [dataclasses.asdict(b) if isinstance(b, Budget) else b for b in budgets]
        if all(isinstance(b, Mapping) for b in as_dict):
            merged["budget"] = {**as_dict[0], **as_dict[1]}
    return merged
