"""Engine calls on an ``AsyncLLM`` that lives on someone else's event loop, made from worker threads
(:class:`AsyncTransport`; see :mod:`refine.backends.vllm.transport`)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any, Callable, Sequence

from vllm import SamplingParams

from .transport import CallLimits, EngineTransport


class AsyncTransport(EngineTransport):
    """Engine calls on an ``AsyncLLM`` running on ``loop``, made from other threads (see
    :mod:`refine.backends.vllm.transport`).

    Args:
        engine: the ``AsyncLLM`` (created on ``loop``).
        loop: the running event loop the engine lives on; calls must not be made from its own thread.
        poll_s: how often a waiting call looks at its cancel event and deadline.
        on_abort: called with the number of engine requests aborted by a deadline or a cancel (for metrics).
    """

    def __init__(self, engine: Any, loop: asyncio.AbstractEventLoop, *, poll_s: float = 0.02,
                 on_abort: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.loop = loop
        self.poll_s = float(poll_s)
        self.on_abort = on_abort
        self._outstanding = 0
        self._count_lock = threading.Lock()

    @property
    def vllm_config(self) -> Any:
        return self.engine.vllm_config

    def get_tokenizer(self) -> Any:
        return self.engine.get_tokenizer()

    @property
    def in_process(self) -> bool:
        return False  # AsyncLLM runs its engine core in a process of its own

    # ------------------------------------------------------------------ plumbing

    def _submit(self, coro: Any) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coro.close()
            raise RuntimeError("AsyncTransport calls block: make them from a worker thread, not the event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def _abort(self, ids: Sequence[str], lim: CallLimits | None, counted: bool) -> None:
        """Abort ``ids`` on the engine and wait (briefly) until vLLM has taken note. ``counted``: an abort by the
        caller's limits or an error (reported to ``on_abort``), not a row the ``watch`` callback stopped."""
        if not ids:
            return
        fut = self._submit(self._abort_requests(list(ids)))
        with contextlib.suppress(Exception):
            fut.result(timeout=10)
        if counted:
            if lim is not None:
                with lim._lock:
                    lim.aborted += len(ids)
            if self.on_abort is not None:
                self.on_abort(len(ids))

    async def _abort_requests(self, ids: list[str]) -> None:
        """Abort the engine requests ``ids`` (on the event loop)."""
        await self.engine.abort(ids)

    @property
    def outstanding(self) -> int:
        """Engine requests of calls in progress (through this transport, all threads)."""
        return self._outstanding

    async def _pump(self, rid: str, prompt: list[int], sp: SamplingParams, sink: "queue.Queue[Any]", i: int) -> None:
        """Feed request ``rid``'s outputs into ``sink`` as ``(i, output)``; ``(i, None)`` when it is over,
        ``(i, exception)`` when it failed."""
        try:
            async for ro in self.engine.generate({"prompt_token_ids": prompt}, sp, rid):
                sink.put((i, ro))
        except asyncio.CancelledError:
            sink.put((i, None))
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            sink.put((i, exc))
            return
        sink.put((i, None))

    async def _start(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams], ids: list[str],
                     sink: "queue.Queue[Any]") -> list[asyncio.Task]:
        return [asyncio.ensure_future(self._pump(rid, list(p), sp, sink, i))
                for i, (rid, p, sp) in enumerate(zip(ids, prompts, params))]

    def _drive(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
               on_output: Callable[[int, Any], bool], deadline: float | None = None) -> None:
        """Schedules one coroutine per request on the loop and waits for their outputs, watching the limits."""
        lim = self._begin(deadline)
        ids = [self.request_id() for _ in prompts]
        sink: queue.Queue[Any] = queue.Queue()
        with self._count_lock:
            self._outstanding += len(ids)
        live = set(range(len(ids)))
        tasks: list[asyncio.Task] = []
        try:
            tasks = self._submit(self._start(prompts, params, ids, sink)).result()
            while live:
                if lim is not None:
                    left = lim.remaining()
                    wait = self.poll_s if left is None else max(0.0, min(self.poll_s, left))
                else:
                    wait = self.poll_s
                try:
                    i, item = sink.get(timeout=wait)
                except queue.Empty:
                    if lim is not None:
                        lim.check()
                    continue
                if i not in live:
                    continue
                if item is None:
                    live.discard(i)
                elif isinstance(item, BaseException):
                    live.discard(i)
                    raise item
                elif on_output(i, item):
                    live.discard(i)
                    self._abort([ids[i]], lim, counted=False)
                if lim is not None:
                    lim.check()
        except BaseException:
            left_over = [ids[i] for i in sorted(live)]
            self._abort(left_over, lim, counted=True)
            for t in tasks:
                self.loop.call_soon_threadsafe(t.cancel)
            raise
        finally:
            with self._count_lock:
                self._outstanding -= len(ids)

    # ------------------------------------------------------------------ engine calls

    def collective_rpc(self, method: Any, args: tuple = ()) -> list[Any]:
        fut = self._submit(self.engine.collective_rpc(method, args=args))
        return fut.result()
