"""Engine calls on a ``vllm.LLM`` from the calling thread, one caller at a time (:class:`LLMTransport`; see
:mod:`refine.backends.vllm.transport` for what a transport does and how limits bind)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Sequence

from vllm import SamplingParams

from .transport import EngineTransport


class LLMTransport(EngineTransport):
    """Engine calls on a ``vllm.LLM``, from the calling thread, one caller at a time."""

    def __init__(self, llm: Any) -> None:
        super().__init__()
        self.engine = llm
        self._lock = threading.RLock()

    @property
    def vllm_config(self) -> Any:
        return self.engine.llm_engine.vllm_config

    def get_tokenizer(self) -> Any:
        return self.engine.get_tokenizer()

    def generate(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
                 deadline: float | None = None) -> list[Any]:
        """``llm.generate`` when nothing can stop the call; with a deadline or a thread's limits, the engine
        stepped here so that they can."""
        if deadline is None and getattr(self._local, "limits", None) is None:
            with self._lock:
                return self.engine.generate([{"prompt_token_ids": p} for p in prompts], list(params),
                                            use_tqdm=False)
        return super().generate(prompts, params, deadline)

    def _drive(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
               on_output: Callable[[int, Any], bool], deadline: float | None = None) -> None:
        """Adds the requests to ``llm.llm_engine`` and steps it (``add_request``/``step``/``abort_request``)
        under the lock; the limits are checked after every engine step."""
        lim = self._begin(deadline)
        with self._lock:
            engine = self.engine.llm_engine
            ids: list[str] = []
            live: set[str] = set()
            try:
                for p, sp in zip(prompts, params):
                    rid = self.request_id()  # outputs and aborts use this external id
                    engine.add_request(rid, {"prompt_token_ids": p}, sp)
                    ids.append(rid)
                    live.add(rid)
                index = {rid: i for i, rid in enumerate(ids)}
                while live and engine.has_unfinished_requests():
                    stop = []
                    for ro in engine.step():
                        i = index.get(ro.request_id)
                        if i is None or ro.request_id not in live:
                            continue
                        if ro.finished:
                            live.discard(ro.request_id)
                        if on_output(i, ro) and ro.request_id in live:
                            stop.append(ro.request_id)
                    if stop:
                        engine.abort_request(stop)
                        live.difference_update(stop)
                    if lim is not None and live:
                        lim.check()
            except BaseException:
                with contextlib.suppress(Exception):
                    engine.abort_request(list(ids))
                if lim is not None:
                    with lim._lock:
                        lim.aborted += len(live)
                raise

    def collective_rpc(self, method: Any, args: tuple = ()) -> list[Any]:
        with self._lock:
            return self.engine.collective_rpc(method, args=args)
