"""Refining against an already running ``vllm serve`` over its OpenAI HTTP API: :class:`HTTPTransport`.

The upstream deployment
-----------------------
Any ``vllm serve`` (or ``python -m vllm.entrypoints.openai.api_server``) whose environment has refine installed and
that was started with refine's forcing processor registered through vLLM's own option::

    vllm serve MODEL --logits-processors refine.backends.vllm:ForcedTokensProcessor --max-logprobs 64 \\
        [--dtype float32] [--enable-prompt-tokens-details]

(``--logits-processors`` takes ``module:Class`` import paths; the processor leaves every request without a forcing
spec alone, so the deployment keeps serving ordinary traffic unchanged.) ``--max-logprobs`` bounds the top-K refine
can store per position (vLLM's default 20); ``--enable-prompt-tokens-details`` makes vLLM report prefix-cache hits,
which refine then counts (see "Counting" below).

How a session's engine calls become HTTP requests
------------------------------------------------
:class:`HTTPTransport` is an :class:`~refine.backends.vllm.transport.EngineTransport`, so a
:class:`~refine.backends.vllm.VLLMBackend` on it works as on an in-process engine. Each engine request of a call is
one ``POST /v1/completions`` (:func:`completion_body`): the prompt as token ids, ``return_token_ids`` and
``return_tokens_as_token_ids`` (token ids come back as ids, never as text), ``logprobs``/``prompt_logprobs`` as the
session asks, and the forcing spec in ``vllm_xargs`` in its *flat* encoding
(:func:`~refine.backends.vllm.processor.flat_force_spec`: vLLM's OpenAI server takes only str/int/float values or
lists of them there). :meth:`~EngineTransport.generate` sends plain requests, :meth:`~EngineTransport.generate_stepwise`
streamed ones (``stream: true``) and reads the tokens as they come.

The requests of a call are sent at once (up to ``max_connections`` per transport), and calls from several threads
(several refinements) run side by side, so vLLM's scheduler batches them with each other and with everything else
the deployment serves. The HTTP client (``httpx``, which vLLM's server extra brings) runs on an event loop in a
thread of the transport's own; callers block on their own thread, as with
:class:`~refine.backends.vllm.async_transport.AsyncTransport`, whose machinery this transport shares.

Deadlines and cancelling
------------------------
:meth:`~EngineTransport.limits` works as for :class:`~refine.backends.vllm.async_transport.AsyncTransport`: when the
deadline passes or the cancel event is set during a call, the call's requests still in flight are cancelled, which
closes their HTTP connections, and vLLM's server aborts a request whose client went away (its ``with_cancellation``);
a streamed row that the ``watch`` callback stops is closed the same way.

What differs from an in-process engine
--------------------------------------
- Entropy: the forcing processor computes exact entropies in the upstream's worker process, where nothing can read
  them over HTTP (``collective_rpc`` is not part of the OpenAI API). The transport therefore never asks for records
  (it drops the spec's ``key``) and every entropy is :func:`~refine.backends.logprobs.topk_entropy_estimate`
  from the top-K log-probabilities (mean error ~0.2 nats for K=16 on SmolLM2; log-probabilities and top-K lists are
  exact). Use ``VLLMBackend(transport, entropy="estimate")``; ``entropy="exact"`` fails on the first call.
- Ranks: the completions API returns top-K log-probabilities without ranks; they are ordered by value, so ties are
  ordered by token id rather than by vLLM's rank. The sampled (forced) token is in the list even when outside the
  top K; it is then given rank K + 1.
- Log-probabilities of ``-inf`` come back as ``-9999.0`` (vLLM clamps them to keep the JSON valid).
- ``"prefill"`` scoring behaves as ``"prompt_logprobs"``: vLLM's server never reads the prefix cache for requests
  with prompt log-probabilities (the flag that lets the in-process engine do so is not in the HTTP API).
- Counting: ``num_cached_tokens`` is read from ``usage.prompt_tokens_details.cached_tokens``, which vLLM sends only
  when started with ``--enable-prompt-tokens-details``; otherwise every prompt counts as computed in full (an upper
  bound of the real forward tokens).
- The model's configuration comes from the upstream (``/v1/models``: name, ``max_model_len``) and from a local copy
  of its folder (tokenizer, ``config.json``'s vocabulary size, ``generation_config.json``'s EOS ids). The tokenizer is
  checked against the upstream's ``/tokenize`` when it has one.

Start-up checks
---------------
:class:`HTTPTransport` asks the upstream what it serves and probes it before use (:meth:`HTTPTransport.connect`):
unreachable, refusing the API key, not serving the named model, a tokenizer that disagrees, log-probabilities that
are not the model's raw ones: :class:`UpstreamError`. Whether the forcing processor is registered is found by
forcing a token the model would not choose (the lowest of an unforced request's top-K) and checking that it comes
back with the log-probability the unforced request gave it (:attr:`HTTPTransport.forcing`); without it the backend
can score with prompt log-probabilities only, and cannot re-decode.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import types
from typing import Any, Sequence

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from ...errors import UpstreamError, require
from .async_transport import AsyncTransport
from .upstream import MAX_LOGPROBS_SEARCH, TOKENIZER_PROBE, Upstream, UpstreamModelConfig
from .upstream import connect as connect_upstream
from .wire import (TOKEN_ID_PREFIX, Logprob, cached_tokens, completion_body, error_text, generated_logprobs,
                   prompt_logprobs, request_output, response_object)

httpx = require("httpx", "httpx")

__all__ = ["HTTPTransport", "Logprob", "UpstreamError", "UpstreamModelConfig", "completion_body",
           "generated_logprobs", "prompt_logprobs", "request_output", "response_object", "error_text",
           "MAX_LOGPROBS_SEARCH", "TOKENIZER_PROBE", "TOKEN_ID_PREFIX"]


class HTTPTransport(AsyncTransport):
    """Engine calls on a ``vllm serve`` deployment over HTTP (see the module docstring).

    Args:
        url: the upstream's base URL, e.g. ``"http://10.0.0.5:8000"`` (a trailing ``/v1`` is accepted).
        tokenizer: the model's local folder (its tokenizer, ``config.json`` and ``generation_config.json``) or a
            loaded Hugging Face tokenizer; None: the folder the upstream reports as its model's ``root``, when it
            exists on this machine.
        api_key: sent as ``Authorization: Bearer <api_key>`` (the upstream's ``--api-key``).
        model: the upstream model to use; None: the one it serves (an error when it serves several).
        max_logprobs: the upstream's ``--max-logprobs`` (checked); None: found by asking, up to
            :data:`MAX_LOGPROBS_SEARCH`.
        timeout_s: how long one request may take (the transport's deadlines stop calls sooner).
        max_connections: HTTP connections at once (more requests wait for one).
        poll_s, on_abort: as for :class:`~refine.backends.vllm.async_transport.AsyncTransport`.
        connect: run :meth:`connect` now (the default); False leaves it to the caller.

    Close it with :meth:`close` (or use it as a context manager).
    """

    def __init__(self, url: str, *, tokenizer: Any = None, api_key: str | None = None, model: str | None = None,
                 max_logprobs: int | None = None, timeout_s: float = 600.0, max_connections: int = 256,
                 poll_s: float = 0.02, on_abort: Any = None, connect: bool = True) -> None:
        url = str(url).rstrip("/")
        if url.endswith("/v1"):
            url = url[: -len("/v1")]
        if not url.startswith(("http://", "https://")):
            raise UpstreamError(f"the upstream URL has to start with http:// or https://, but is {url!r}")
        if max_logprobs is not None and int(max_logprobs) < 1:
            raise UpstreamError(f"`max_logprobs` has to be at least 1, but is {max_logprobs}")
        #: where the upstream answers, with the API key's header and the request timeout
        self.upstream = Upstream(url, {"Authorization": f"Bearer {api_key}"} if api_key else {}, float(timeout_s))
        self._want_model = model
        self._want_max_logprobs = None if max_logprobs is None else int(max_logprobs)
        self._tokenizer_arg = tokenizer
        self._tasks: dict[str, asyncio.Task] = {}
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="refine-http", daemon=True)
        self._thread.start()
        super().__init__(url, loop, poll_s=poll_s, on_abort=on_abort)
        limits = httpx.Limits(max_connections=int(max_connections), max_keepalive_connections=int(max_connections))
        timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 30.0), pool=None)
        self.client = self._submit(self._client(limits, timeout)).result()
        self.model_config: UpstreamModelConfig | None = None
        self.tokenizer: Any = None
        #: whether the upstream has the forcing processor (found by :meth:`connect`)
        self.forcing = False
        #: why :attr:`forcing` is False (None when it is True or before :meth:`connect`)
        self.forcing_problem: str | None = None
        if connect:
            try:
                self.connect()
            except BaseException:
                self.close()
                raise

    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def headers(self) -> dict[str, str]:
        return self.upstream.headers

    @property
    def timeout_s(self) -> float:
        return self.upstream.timeout_s

    async def _client(self, limits: Any, timeout: Any) -> Any:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, limits=limits, timeout=timeout)

    # ------------------------------------------------------------------ what EngineTransport asks for

    @property
    def vllm_config(self) -> Any:
        if self.model_config is None:
            raise UpstreamError("the transport has not connected yet: call connect()")
        return types.SimpleNamespace(model_config=self.model_config)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def collective_rpc(self, method: Any, args: tuple = ()) -> list[Any]:
        raise NotImplementedError("the upstream's workers cannot be called over its OpenAI HTTP API (no "
                                  "collective_rpc): entropies over HTTP are topk_entropy_estimate()")

    # ------------------------------------------------------------------ start-up

    def connect(self) -> None:
        """Ask the upstream what it serves, load and check the local tokenizer, find ``max_logprobs``, and probe
        for the forcing processor (:func:`~refine.backends.vllm.upstream.connect`; see the module docstring).
        Raises :class:`UpstreamError`."""
        found = connect_upstream(self.upstream, model=self._want_model, max_logprobs=self._want_max_logprobs,
                                 tokenizer=self._tokenizer_arg)
        self.model_config, self.tokenizer = found.model_config, found.tokenizer
        self.forcing, self.forcing_problem = found.forcing, found.forcing_problem

    # ------------------------------------------------------------------ requests on the loop

    async def _start(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams], ids: list[str],
                     sink: "queue.Queue[Any]") -> list[asyncio.Task]:
        tasks = await super()._start(prompts, params, ids, sink)
        for rid, task in zip(ids, tasks):
            self._tasks[rid] = task
            task.add_done_callback(lambda _t, rid=rid: self._tasks.pop(rid, None))
        return tasks

    async def _abort_requests(self, ids: list[str]) -> None:
        """Cancel the requests' tasks: their connections close, and vLLM aborts a request whose client left."""
        tasks = [self._tasks[r] for r in ids if r in self._tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pump(self, rid: str, prompt: list[int], sp: SamplingParams, sink: "queue.Queue[Any]", i: int) -> None:
        """One HTTP request: ``(i, output)`` into ``sink`` (streamed: one per chunk), ``(i, None)`` when over,
        ``(i, exception)`` when it failed."""
        try:
            if sp.output_kind == RequestOutputKind.DELTA:
                await self._stream(prompt, sp, sink, i)
            else:
                body = completion_body(self.model_config.model, prompt, sp)
                r = await self.client.post("/v1/completions", json=body)
                if r.status_code != 200:
                    raise UpstreamError(f"the upstream refused a request: {error_text(r.status_code, r.text)}")
                sink.put((i, request_output(prompt, response_object(r.text), sp.logprobs)))
        except asyncio.CancelledError:
            sink.put((i, None))
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            if isinstance(exc, httpx.HTTPError):
                exc = UpstreamError(f"request to the upstream at {self.url} failed: {exc!r}")
            sink.put((i, exc))
            return
        sink.put((i, None))

    async def _stream(self, prompt: list[int], sp: SamplingParams, sink: "queue.Queue[Any]", i: int) -> None:
        body = completion_body(self.model_config.model, prompt, sp, stream=True)
        k = sp.logprobs
        async with self.client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                raise UpstreamError(f"the upstream refused a request: {error_text(r.status_code, text)}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                chunk = response_object(data)
                if "error" in chunk:
                    raise UpstreamError(f"the upstream failed a request: {error_text(500, data)}")
                cached = cached_tokens(chunk.get("usage"))
                for c in chunk.get("choices") or []:
                    ids = [int(t) for t in c.get("token_ids") or []]
                    delta = types.SimpleNamespace(token_ids=ids, logprobs=generated_logprobs(
                        ids, c.get("logprobs"), k or 0) if k is not None and ids else [])
                    sink.put((i, types.SimpleNamespace(num_cached_tokens=None, outputs=[delta],
                                                       finished=c.get("finish_reason") is not None)))
                if cached is not None:  # the usage chunk, after the last tokens
                    empty = types.SimpleNamespace(token_ids=[], logprobs=[])
                    sink.put((i, types.SimpleNamespace(num_cached_tokens=cached, outputs=[empty], finished=True)))
        raise UpstreamError("the upstream ended a streamed request without [DONE]")

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the HTTP client and stop the transport's event loop (in-flight calls fail)."""
        if not self._thread.is_alive():
            return
        client = getattr(self, "client", None)
        if client is not None:
            fut = asyncio.run_coroutine_threadsafe(client.aclose(), self.loop)
            try:
                fut.result(timeout=10)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> "HTTPTransport":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
