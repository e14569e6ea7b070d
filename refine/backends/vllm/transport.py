"""How a :class:`~refine.backends.vllm.VLLMSession` reaches its engine: an :class:`EngineTransport`.

A session needs three engine calls: run a batch of requests to their final outputs (:meth:`~EngineTransport.generate`),
run a batch step by step so that a callback can stop rows early (:meth:`~EngineTransport.generate_stepwise`), and
call the workers (:meth:`~EngineTransport.collective_rpc`, to read the forcing processor's entropy records).

- :class:`~refine.backends.vllm.llm_transport.LLMTransport` drives a ``vllm.LLM`` from the calling thread
  (``llm.generate``; the step-wise path, and any call that a deadline or a cancel event could stop, adds
  requests to ``llm.llm_engine`` and calls ``step()`` itself). A lock keeps the engine to one caller at a time.
- :class:`~refine.backends.vllm.async_transport.AsyncTransport` submits requests to a
  ``vllm.v1.engine.async_llm.AsyncLLM`` that lives on an asyncio event loop owned by someone else (a server's):
  every call, made from a worker thread, schedules one coroutine per request on that loop
  (``asyncio.run_coroutine_threadsafe``) and waits for them. Calls from several threads
  (several refinements) are then in flight together, and vLLM's scheduler batches their requests with each other
  and with ordinary traffic.

Limits per caller
-----------------
:meth:`EngineTransport.limits` binds, for the calling thread, a deadline and a cancel event to every engine call
made inside it. :class:`AsyncTransport` enforces both *during* a call: when the deadline passes or the event is
set, it aborts the call's outstanding engine requests (``AsyncLLM.abort``) and raises :class:`EngineDeadline`
(a :class:`~refine.errors.DeadlineReached`: the search stops and returns its best output so far) or
:class:`EngineCancelled`. The first call inside a :meth:`~EngineTransport.limits` block is exempt from the
deadline (not from cancelling): it scores the output being refined, without which there is nothing to return.

A caller may also hand one call a deadline of its own (``generate(..., deadline=...)``, a ``time.monotonic()``
value): the session passes its :attr:`~refine.backends.base.Session.deadline`, which the search sets from
``Budget.max_seconds``, so that limit binds inside a long call on every transport, whether or not a
:meth:`~EngineTransport.limits` block is open. It is never exempt, and the earlier of the two deadlines applies.

:class:`AsyncTransport` watches both while it waits for outputs. :class:`LLMTransport` checks them between two
engine steps: a call made under a deadline or inside a :meth:`~EngineTransport.limits` block drives
``llm.llm_engine`` step by step itself instead of calling ``llm.generate`` (which cannot be interrupted), and
aborts the call's requests when the deadline passes or the event is set.

A call cut short by a deadline raises before it returns outputs, so the session's ``forward_tokens`` do not count
the engine work of its aborted requests (vLLM reports none for them): a refinement that hit ``max_seconds`` on
vLLM reports a lower bound of its compute.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import types
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from ...errors import DeadlineReached, RefineError

#: ``watch(i, partial_output) -> bool``: asked after new tokens of unfinished request ``i``; True stops it
Watch = Callable[[int, Any], bool]


class EngineDeadline(DeadlineReached):
    """The caller's deadline passed during an engine call; the call's engine requests were aborted."""


class EngineCancelled(RefineError):
    """The caller's cancel event was set (its client went away); the call's engine requests were aborted."""


@dataclass
class CallLimits:
    """What :meth:`EngineTransport.limits` binds to a thread's engine calls.

    Attributes:
        deadline: ``time.monotonic()`` value after which calls are aborted; None: none.
        cancel: an event that, once set, aborts calls; None: none.
        calls: engine calls made so far under these limits (the first is exempt from the deadline).
        until: the current call's own deadline (``time.monotonic()``; its caller's, see the module docstring),
            never exempt; set by each call for its duration.
        expired: whether a deadline aborted (or refused) a call.
        aborted: engine requests aborted because of these limits.
    """

    deadline: float | None = None
    cancel: threading.Event | None = None
    calls: int = 0
    until: float | None = None
    expired: bool = False
    aborted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def remaining(self) -> float | None:
        """Seconds left before a deadline stops this call: the earlier of the bound deadline (from the second
        call on) and the call's own (None: no deadline for it)."""
        ends = [d for d in (self.deadline if self.calls > 1 else None, self.until) if d is not None]
        if not ends:
            return None
        return min(ends) - time.monotonic()

    def check(self) -> None:
        """Raise if the call should stop now (cancelled, or past the deadline)."""
        if self.cancel is not None and self.cancel.is_set():
            raise EngineCancelled("the request was cancelled")
        left = self.remaining()
        if left is not None and left <= 0:
            self.expired = True
            raise EngineDeadline()


class PartialOutput:
    """A request's output accumulated from ``DELTA`` outputs; shaped like a ``RequestOutput`` (one completion)."""

    def __init__(self, prompt: list[int]) -> None:
        self.prompt_token_ids = prompt
        self.num_cached_tokens: int | None = None
        self.outputs = [types.SimpleNamespace(token_ids=[], logprobs=[])]
        self.stopped = False
        self.finished = False

    def extend(self, ro: Any) -> None:
        if ro.num_cached_tokens is not None:
            self.num_cached_tokens = ro.num_cached_tokens
        c = ro.outputs[0]
        self.outputs[0].token_ids.extend(int(t) for t in c.token_ids)
        self.outputs[0].logprobs.extend(c.logprobs or [])
        self.finished = bool(ro.finished)


class EngineTransport(ABC):
    """The engine calls of a session (see the module docstring). ``engine`` is the wrapped engine object."""

    engine: Any

    def __init__(self) -> None:
        self._local = threading.local()
        self._prefix = f"refine-{uuid.uuid4().hex[:8]}-"
        self._counter = itertools.count()

    # ------------------------------------------------------------------ shared

    @property
    @abstractmethod
    def vllm_config(self) -> Any:
        """The engine's ``VllmConfig``."""

    @abstractmethod
    def get_tokenizer(self) -> Any:
        """The engine's (Hugging Face) tokenizer."""

    @property
    def in_process(self) -> bool:
        """Whether the engine's logits processors may run in this process (their records are readable here)."""
        return True

    def request_id(self) -> str:
        return f"{self._prefix}{next(self._counter)}"

    @contextlib.contextmanager
    def limits(self, deadline_s: float | None = None, cancel: threading.Event | None = None) -> Iterator[CallLimits]:
        """Bind a deadline (``deadline_s`` seconds from now) and a cancel event to this thread's engine calls
        inside the block (nested blocks replace the outer one until they end). Yields the :class:`CallLimits`."""
        lim = CallLimits(None if deadline_s is None else time.monotonic() + float(deadline_s), cancel)
        outer = getattr(self._local, "limits", None)
        self._local.limits = lim
        try:
            yield lim
        finally:
            self._local.limits = outer

    def _begin(self, deadline: float | None = None) -> CallLimits | None:
        """The limits of one call, checked (raises if already past them): the current thread's, counted as one
        more call, with the call's own ``deadline`` folded in (limits of the call alone when no block is open)."""
        lim = getattr(self._local, "limits", None)
        if lim is None and deadline is not None:
            lim = CallLimits()
        if lim is not None:
            lim.calls += 1
            lim.until = deadline
            lim.check()
        return lim

    # ------------------------------------------------------------------ engine calls

    @abstractmethod
    def _drive(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
               on_output: Callable[[int, Any], bool], deadline: float | None = None) -> None:
        """Start one request per prompt and hand each output to ``on_output(i, output)`` in the calling thread;
        True from it aborts request ``i``. Returns when every request is over; on a deadline (the thread's
        limits' or ``deadline``), a cancel or an error, aborts what is left and raises."""

    def generate(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
                 deadline: float | None = None) -> list[Any]:
        """Run one request per prompt to its end; their final ``RequestOutput`` s, in order. ``deadline``
        (``time.monotonic()``): past it, the call's requests are aborted and :class:`EngineDeadline` raised."""
        final: list[Any] = [None] * len(prompts)

        def keep(i: int, ro: Any) -> bool:
            final[i] = ro
            return False

        params = [sp if sp.output_kind == RequestOutputKind.FINAL_ONLY else self._final(sp) for sp in params]
        self._drive(prompts, params, keep, deadline)
        if any(o is None or not o.finished for o in final):
            raise RuntimeError("the engine ended a request without its final output")
        return final

    def generate_stepwise(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
                          watch: Watch, deadline: float | None = None) -> list[PartialOutput]:
        """Like :meth:`generate` with ``DELTA`` outputs: after new tokens of an unfinished request ``i``,
        ``watch(i, partial)`` decides whether to stop it (aborted, its partial output returned with
        ``stopped=True``)."""
        outs = [PartialOutput(list(p)) for p in prompts]

        def step(i: int, ro: Any) -> bool:
            o = outs[i]
            o.extend(ro)
            if ro.finished:
                return False
            if watch(i, o):
                o.stopped = True
                return True
            return False

        self._drive(prompts, [self._delta(sp) for sp in params], step, deadline)
        return outs

    @abstractmethod
    def collective_rpc(self, method: Any, args: tuple = ()) -> list[Any]:
        """``collective_rpc`` on the engine's workers: one result per worker."""

    @staticmethod
    def _delta(sp: SamplingParams) -> SamplingParams:
        sp = sp.clone()
        sp.output_kind = RequestOutputKind.DELTA
        return sp

    @staticmethod
    def _final(sp: SamplingParams) -> SamplingParams:
        sp = sp.clone()
        sp.output_kind = RequestOutputKind.FINAL_ONLY
        return sp
