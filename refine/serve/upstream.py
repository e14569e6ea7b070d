"""``refine serve --upstream URL``: the server as a stateless front over a running ``vllm serve`` deployment.

:class:`UpstreamEngine` stands in for :class:`refine.serve.engine.Engine` in :func:`refine.serve.app.build_app`:
the same endpoints, checks, caps and responses, but no local engine. What the front holds is the model's tokenizer (to
template chats and count tokens, as the in-process server does), a thread pool for refinements and an
:class:`~refine.backends.vllm.http.HTTPTransport` to the upstream; nothing lives across requests, so any number of
fronts can serve the same deployment behind a load balancer.

- Requests without refine options, and every request's initial completions, go upstream as one
  ``POST /v1/completions`` per prompt (token ids, the request's sampling fields; refine's own ``vllm_xargs`` stay
  here), awaited on the server's event loop; a client that disconnects closes that upstream request, and vLLM
  aborts it.
- Refinements run in the pool on a :class:`~refine.backends.vllm.VLLMBackend` over the HTTP transport: their
  scoring and re-decoding requests go upstream in parallel and are batched there by vLLM's scheduler with
  everything else it serves. Deadlines and cancelling close in-flight upstream requests (see
  :mod:`refine.backends.vllm.http`). Entropies are estimated from the top-K (the exact ones stay in the upstream's
  worker process), so an objective that weighs entropy can rank candidates slightly differently than the
  in-process server.
- ``/v1/models`` names the upstream's model and context length.

Start-up (:meth:`UpstreamEngine.connect`, before the server listens) fails with
:class:`~refine.errors.UpstreamError` when the upstream is unreachable, refuses the API key, serves
another tokenizer, or does not have the forcing processor registered (``vllm serve ...
--logits-processors refine.backends.vllm:ForcedTokensProcessor``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, UpstreamError
from .engine import Engine
from .protocol import RequestError


class UpstreamEngine(Engine):
    """What the front serves with (see the module docstring).

    Args:
        url: the upstream ``vllm serve``'s base URL.
        tokenizer: the model's local folder (None: the upstream's model path, when it is a folder here).
        api_key: the upstream's API key, if it wants one.
        model: the upstream model to use (None: the one it serves).
        max_concurrent_refinements: threads refining at once.
        timeout_s: how long one upstream request may take.
    """

    def __init__(self, url: str, tokenizer: Any = None, api_key: str | None = None, model: str | None = None,
                 max_concurrent_refinements: int = 16, timeout_s: float = 600.0) -> None:
        super().__init__("", None, max_concurrent_refinements)
        self.url = url
        self.tokenizer_arg = tokenizer
        self.api_key = api_key
        self.model = model
        self.timeout_s = float(timeout_s)
        self.model_name: str | None = None
        self.client: Any = None

    def connect(self) -> None:
        """Connect to the upstream and check it (see the module docstring); also builds the backend and the pool.
        Call before the server starts: failures raise :class:`~refine.errors.UpstreamError`."""
        from concurrent.futures import ThreadPoolExecutor

        from ..backends.vllm import VLLMBackend
        from ..backends.vllm.http import HTTPTransport

        self.transport = HTTPTransport(self.url, tokenizer=self.tokenizer_arg, api_key=self.api_key,
                                       model=self.model, timeout_s=self.timeout_s,
                                       max_connections=max(64, 16 * self.max_concurrent_refinements))
        if not self.transport.forcing:
            problem = self.transport.forcing_problem
            self.transport.close()
            raise UpstreamError(f"cannot refine through the upstream: {problem}")
        self.backend = VLLMBackend(self.transport, entropy="estimate")
        self.tokenizer = self.backend.hf_tokenizer
        self.context = int(self.backend.max_length)
        self.model_name = self.transport.model_config.model
        self.pool = ThreadPoolExecutor(max_workers=self.max_concurrent_refinements, thread_name_prefix="refine")

    def start(self, on_abort: Any = None) -> None:
        """On the server's event loop (its lifespan): the HTTP client for initial and plain completions."""
        from ..backends.vllm.http import httpx

        if self.transport is None:
            raise ConfigError("UpstreamEngine.connect() has to run before the server starts")
        self.transport.on_abort = on_abort
        self.client = httpx.AsyncClient(base_url=self.transport.url, headers=self.transport.headers,
                                        timeout=httpx.Timeout(self.timeout_s, connect=30.0, pool=None),
                                        limits=httpx.Limits(max_connections=None))

    def stop(self) -> None:
        import asyncio

        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            client, self.client = self.client, None
            try:
                asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:  # no loop running any more: its connections go with the process
                pass
        if self.transport is not None:
            self.transport.close()

    async def generate(self, prompt: list[int], params: Any) -> Any:
        """One request upstream, awaited on the event loop: a ``RequestOutput``-shaped object."""
        from ..backends.vllm.http import completion_body, error_text, httpx, request_output, response_object

        body = completion_body(self.model_name, prompt, params)
        try:
            r = await self.client.post("/v1/completions", json=body)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the upstream at {self.url} failed a completion: {exc!r}") from exc
        if r.status_code == 400:  # the request's own fault: the client hears why
            raise RequestError(f"the model server refused the request: {error_text(400, r.text)}")
        if r.status_code != 200:
            raise UpstreamError(f"the upstream refused a completion: {error_text(r.status_code, r.text)}")
        return request_output(prompt, response_object(r.text), params.logprobs)
