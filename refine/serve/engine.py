"""What ``refine serve`` serves with (:class:`Engine`): vLLM's ``AsyncLLM`` started in the server's event loop, the
transport refinements reach it through, the backend on that transport, and the thread pool refinements run in."""

from __future__ import annotations

import threading
import uuid
from typing import Any, Mapping

from ..errors import ConfigError


class Engine:
    """What the server serves with, built in its event loop (:meth:`start`): the ``AsyncLLM``, the
    :class:`~refine.backends.vllm.async_transport.AsyncTransport` that refinements reach it through, the
    :class:`~refine.backends.vllm.VLLMBackend` on that transport, and the thread pool refinements run in.

    Args:
        model_path: the model folder.
        engine_kwargs: engine arguments (:func:`engine_kwargs`), on top of refine's defaults.
        max_concurrent_refinements: threads refining at once (more wait for a free one).
    """

    def __init__(self, model_path: str, engine_kwargs: Mapping[str, Any] | None = None,
                 max_concurrent_refinements: int = 16) -> None:
        if int(max_concurrent_refinements) < 1:
            raise ConfigError("`--max-concurrent-refinements` has to be at least 1")
        self.model_path = str(model_path)
        self.engine_kwargs = dict(engine_kwargs or {})
        self.max_concurrent_refinements = int(max_concurrent_refinements)
        self.engine: Any = None
        self.transport: Any = None
        self.backend: Any = None
        self.pool: Any = None
        self.tokenizer: Any = None
        self.context = 0

    def start(self, on_abort: Any = None) -> None:
        """Start the engine on the running event loop (call from a coroutine: the server's lifespan)."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        from ..backends.vllm import AsyncTransport, VLLMBackend, make_async_engine

        loop = asyncio.get_running_loop()
        self.engine = make_async_engine(self.model_path, **self.engine_kwargs)
        self.transport = AsyncTransport(self.engine, loop, on_abort=on_abort)
        self.backend = VLLMBackend(self.transport)
        self.tokenizer = self.backend.hf_tokenizer
        self.context = int(self.backend.max_length)
        self.pool = ThreadPoolExecutor(max_workers=self.max_concurrent_refinements, thread_name_prefix="refine")

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.shutdown()

    async def generate(self, prompt: list[int], params: Any) -> Any:
        """One request through the engine, awaited on the event loop: its final ``RequestOutput``."""
        from vllm.sampling_params import RequestOutputKind

        params = params.clone()
        params.output_kind = RequestOutputKind.FINAL_ONLY
        last = None
        async for out in self.engine.generate({"prompt_token_ids": prompt}, params, f"serve-{uuid.uuid4().hex}"):
            last = out
        if last is None or not last.finished:
            raise RuntimeError("the engine ended a request without its final output")
        return last

    def refine(self, prompt: list[int], output: list[int], config: Any, cancel: threading.Event) -> Any:
        """Refine one completion (in a pool thread): the search's engine calls honour ``cancel`` and, inside each
        call, the deadline ``config.budget.max_seconds`` from now. A deadline that cut a call short ends the
        search with its best output so far and stop reason ``max_seconds``."""
        from ..api import refine_tokens
        from ..backends.vllm import EngineCancelled

        if cancel.is_set():
            raise EngineCancelled("the request was cancelled")
        with self.transport.limits(config.budget.max_seconds, cancel):
            return refine_tokens(self.backend, prompt, output, config)
