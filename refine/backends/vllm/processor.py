"""The forcing logits processor: makes a greedy vLLM request emit given tokens, and records each step's exact
entropy (see :mod:`refine.backends.vllm`, "Scoring methods" and "Entropy").

:func:`force_spec` builds the ``SamplingParams.extra_args[EXTRA_KEY]`` entry a request carries;
:class:`ForcedTokensProcessor` acts on such requests only; :func:`take_entropies` reads the entropies it recorded
in this process.
"""

from __future__ import annotations

import itertools
import math
import threading
from typing import Any, Sequence

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

#: key in ``SamplingParams.extra_args`` that carries a forcing spec (not ``refine_*``: those are refine options)
EXTRA_KEY = "_refine_force"
#: prefix of the flat encoding's keys: ``FLAT_PREFIX + field`` (see the module docstring)
FLAT_PREFIX = EXTRA_KEY + "."
#: the fields of a spec
SPEC_FIELDS = ("force", "ban", "ban_from", "ban_until", "deny", "eos_at", "eos", "key")
#: import path of the processor, for ``LLM(logits_processors=[...])`` / ``--logits-processors``
PROCESSOR_FQCN = "refine.backends.vllm:ForcedTokensProcessor"

# per-request entropies recorded by the processor: key -> {output position: entropy}
_ENTROPY: dict[str, dict[int, float]] = {}
_ENTROPY_LOCK = threading.Lock()
_ENTROPY_MAX_KEYS = 100_000  # uncollected keys beyond this are dropped (oldest first)


class _Spec:
    """A parsed forcing spec (see :func:`force_spec`)."""

    __slots__ = ("force", "ban", "ban_from", "ban_until", "deny", "eos_at", "eos", "key", "_deny_index")

    def __init__(self, d: dict[str, Any]) -> None:
        where = f"the forcing spec (extra_args[{EXTRA_KEY!r}] or {FLAT_PREFIX}<field>)"
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a dict, got {type(d).__name__}")
        unknown = set(d) - set(SPEC_FIELDS)
        if unknown:
            raise ValueError(f"{where} has unknown fields {sorted(unknown)}; its fields are {list(SPEC_FIELDS)}")

        def ids(name: str) -> tuple[int, ...]:
            value = d.get(name, ())
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{where}: `{name}` must be a list of token ids, got {value!r}")
            return tuple(number(name, t) for t in value)

        def number(name: str, value: Any) -> int:
            try:
                if isinstance(value, bool) or int(value) != value:
                    raise ValueError
                return int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: `{name}` must hold integers, got {value!r}") from None

        self.force = ids("force")
        self.ban = ids("ban")
        self.deny = ids("deny")
        self._deny_index = None
        if any(t < 0 for t in self.force + self.ban + self.deny):
            raise ValueError(f"{where}: token ids must be >= 0")
        self.ban_from = number("ban_from", d.get("ban_from", 0))
        self.ban_until = number("ban_until", d.get("ban_until", 0))
        eos_at = d.get("eos_at")
        self.eos_at = None if eos_at is None else number("eos_at", eos_at)
        self.eos = number("eos", d.get("eos", -1))
        if self.eos_at is not None and self.eos < 0:
            raise ValueError(f"{where}: `eos_at` needs `eos`")
        key = d.get("key")
        self.key = None if key is None else str(key)

    def token_at(self, n: int) -> int | None:
        """The token forced at output position ``n``, or None."""
        if n < len(self.force):
            return self.force[n]
        if self.eos_at is not None and n == self.eos_at:
            return self.eos
        return None

    def deny_index(self, device: Any) -> torch.Tensor:
        """:attr:`deny` as an index tensor on ``device`` (built once)."""
        if self._deny_index is None or self._deny_index.device != device:
            self._deny_index = torch.tensor(self.deny, dtype=torch.long, device=device)
        return self._deny_index


def force_spec(
    force: Sequence[int] = (),
    *,
    ban: Sequence[int] = (),
    ban_from: int = 0,
    ban_until: int = 0,
    deny: Sequence[int] = (),
    eos_at: int | None = None,
    eos: int | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """The ``extra_args`` entry that makes :class:`ForcedTokensProcessor` act on a request.

    Output position ``n`` (0-based, counted in generated tokens): for ``n < len(force)`` the token
    ``force[n]`` is emitted; at ``n == eos_at`` the token ``eos``; otherwise the tokens in ``ban``
    are masked while ``ban_from <= n < ban_until``, and the tokens in ``deny`` at every position not forced
    (``RefineConfig.forbid``). With ``key`` the processor records the exact
    entropy of every step's distribution (before masking) for :func:`take_entropies`.
    The request must be greedy (``temperature=0``) for forcing to be exact.
    """
    d: dict[str, Any] = {"force": [int(t) for t in force]}
    if ban and ban_until > ban_from:
        d.update(ban=[int(t) for t in ban], ban_from=int(ban_from), ban_until=int(ban_until))
    if deny:
        d["deny"] = [int(t) for t in deny]
    if eos_at is not None:
        d.update(eos_at=int(eos_at), eos=int(eos))  # type: ignore[arg-type]
    if key is not None:
        d["key"] = str(key)
    return d


def flat_force_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The flat encoding of a spec (a :func:`force_spec` dict): ``{FLAT_PREFIX + field: value}``, values int, str
    or lists of int, as vLLM's OpenAI server accepts them in ``vllm_xargs``.

    >>> flat_force_spec(force_spec([5, 6], eos_at=9, eos=2))
    {'_refine_force.force': [5, 6], '_refine_force.eos_at': 9, '_refine_force.eos': 2}
    """
    checked = _Spec(spec)  # the processor's own checks: a spec it would refuse is refused here
    flat: dict[str, Any] = {}
    for name, value in spec.items():
        if value is not None:
            value = getattr(checked, name)
            flat[FLAT_PREFIX + name] = list(value) if isinstance(value, tuple) else value
    return flat


def spec_from_extra_args(extra: Any) -> dict[str, Any] | None:
    """The forcing spec a request's ``extra_args`` carry, in either encoding (see the module docstring), as a
    :func:`force_spec`-shaped dict; None when they carry none. Both encodings at once: ``ValueError``."""
    if not extra:
        return None
    flat = {k[len(FLAT_PREFIX):]: v for k, v in extra.items() if isinstance(k, str) and k.startswith(FLAT_PREFIX)}
    if EXTRA_KEY in extra:
        if flat:
            raise ValueError(f"extra_args carry a forcing spec twice: {EXTRA_KEY!r} and "
                             f"{sorted(FLAT_PREFIX + k for k in flat)}; send one encoding")
        return extra[EXTRA_KEY]
    return flat or None


def _spec_of(params: SamplingParams | None) -> _Spec | None:
    extra = getattr(params, "extra_args", None) if params is not None else None
    spec = spec_from_extra_args(extra)
    return None if spec is None else _Spec(spec)


def _record_entropy(key: str, pos: int, value: float) -> None:
    with _ENTROPY_LOCK:
        d = _ENTROPY.get(key)
        if d is None:
            if len(_ENTROPY) >= _ENTROPY_MAX_KEYS:
                for k in list(itertools.islice(_ENTROPY, len(_ENTROPY) // 2)):
                    del _ENTROPY[k]
            d = _ENTROPY[key] = {}
        d[pos] = value  # a later step at the same position (e.g. after a chunked prefill) overwrites


def take_entropies(keys: Sequence[str]) -> dict[str, dict[int, float]]:
    """Remove and return the entropies recorded in *this* process for ``keys``."""
    with _ENTROPY_LOCK:
        return {k: _ENTROPY.pop(k) for k in keys if k in _ENTROPY}


class ForcedTokensProcessor(LogitsProcessor):
    """vLLM (V1 interface) logits processor that forces given output tokens, bans EOS early and masks denied
    tokens.

    Only requests whose ``SamplingParams.extra_args`` contain :data:`EXTRA_KEY` (see
    :func:`force_spec`) are touched; all other requests pass through unchanged, so it is safe
    to register on an engine that also serves ordinary traffic. Not argmax-invariant: it is
    applied to greedy batches too. It runs after vLLM's built-in processors (min_tokens,
    logit_bias); forcing requests use neither.
    """

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        # batch row -> (spec, live reference to the request's output token list)
        self._rows: dict[int, tuple[_Spec, list[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        spec = _spec_of(sampling_params)  # raises ValueError for a malformed spec
        if spec is not None and sampling_params.temperature > 1e-5 and spec.force:
            raise ValueError(f"requests with extra_args[{EXTRA_KEY!r}] must be greedy (temperature=0)")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            spec = _spec_of(params)
            if spec is None:
                self._rows.pop(index, None)
            else:
                self._rows[index] = (spec, output)
        for a, b, direction in batch_update.moved:
            ea = self._rows.pop(a, None)
            eb = self._rows.pop(b, None)
            if ea is not None:
                self._rows[b] = ea
            if eb is not None and direction == MoveDirectionality.SWAP:
                self._rows[a] = eb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows:
            return logits
        rows = [(i, spec, len(out)) for i, (spec, out) in self._rows.items() if i < logits.shape[0]]
        keyed = [(i, spec.key, n) for i, spec, n in rows if spec.key is not None]
        if keyed:
            idx = torch.tensor([i for i, _, _ in keyed], dtype=torch.long, device=logits.device)
            logp = torch.log_softmax(logits.index_select(0, idx).to(torch.float64), dim=-1)
            ent = (-(logp.exp() * torch.nan_to_num(logp, neginf=0.0)).sum(-1)).tolist()
            for (_, key, n), h in zip(keyed, ent):
                _record_entropy(key, n, float(h))
        vocab = logits.shape[1]
        for i, spec, n in rows:
            tok = spec.token_at(n)
            if tok is not None and 0 <= tok < vocab:  # an id out of range is left to fail the caller's check
                row = logits[i]
                row.fill_(-math.inf)
                row[tok] = 0.0
                continue
            if spec.ban and spec.ban_from <= n < spec.ban_until:
                logits[i, list(spec.ban)] = -math.inf
            if spec.deny:
                logits[i].index_fill_(0, spec.deny_index(logits.device), -math.inf)
        return logits

