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
Prometheus metrics (:mod:`refine.serve_metrics`); vLLM engine arguments (``--tensor-parallel-size``,
``--data-parallel-size``, ``--max-model-len``, ``--gpu-memory-utilization``, ``--dtype``, ...) pass through.

Serving model: one ``AsyncLLM`` (vLLM's asynchronous engine; its engine core runs in a process of its own),
started in the server's event loop when the app starts (FastAPI lifespan) with refine's engine defaults, the
engine arguments above and the forcing logits processor registered. Every request's initial completions are
awaited straight from it, so unrefined requests are served at vLLM's speed and batched with everything else in
flight. A refined request then refines each completion in a thread pool of ``--max-concurrent-refinements``
threads (default 16; more refinements wait for a free thread, unrefined requests never do). A refinement's
engine calls (scoring candidates, re-decoding suffixes) go through
:class:`~refine.backends.vllm.transport.AsyncTransport`: each call submits its requests to the engine on the
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
processor registered (:class:`~refine.serve_upstream.UpstreamEngine`, :mod:`refine.backends.vllm.http`). Such a
front keeps no state between requests, so several can run behind any HTTP load balancer. Start-up fails with a
clear message when the upstream is unreachable or lacks the processor; an upstream failure during a request gets
a 502.
"""


import copy
import json
import logging
import os
import re
import threading
import time
import uuid
from typing import Any, Mapping

from .about import VLLM_INSTALL, pip_extra
from .errors import ConfigError, InputError, UpstreamError
from .limits import LimitError, RequestLimits

log = logging.getLogger("refine.serve")

#: OpenAI request fields passed to ``SamplingParams``, with the JSON types each accepts
SAMPLING_FIELDS: dict[str, tuple[type, ...]] = {
    "max_tokens": (int,), "temperature": (int, float), "top_p": (int, float), "top_k": (int,),
    "seed": (int,), "n": (int,), "stop": (str, list), "presence_penalty": (int, float),
    "frequency_penalty": (int, float), "repetition_penalty": (int, float), "min_tokens": (int,),
}

class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` with an OpenAI-shaped error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.status, self.code = param, status, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


def _check_type(body: Mapping[str, Any], name: str, types: tuple[type, ...]) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, types):
        raise RequestError(f"`{name}` has to be of type {'/'.join(t.__name__ for t in types)}, "
                           f"but is {value!r}", name)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object (malformed JSON or a non-object body: :class:`RequestError`)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError(f"the request body has to be a JSON object, but is a {type(body).__name__}")
    return body


def sampling_params(body: Mapping[str, Any]):
    """``SamplingParams`` from an OpenAI request body (refine options travel in ``vllm_xargs``)."""
    from vllm import SamplingParams

    from .integrations.vllm import FLAT_PREFIX, REFINE_KEY

    for name, types in SAMPLING_FIELDS.items():
        _check_type(body, name, types)
    kw = {k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None}
    kw.setdefault("max_tokens", 64)
    kw.setdefault("temperature", 1.0)
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise RequestError(f"`vllm_xargs` has to be an object, but is {xargs!r}", "vllm_xargs")
    for key in xargs or {}:
        if not (key == REFINE_KEY or key.startswith(FLAT_PREFIX)):  # the keys refine_options() reads
            raise RequestError(f"`vllm_xargs.{key}` is not accepted: this server takes refine options "
                               "(`refine_<option>`) only", f"vllm_xargs.{key}")
    try:
        return SamplingParams(extra_args=xargs or None, **kw)
    except (TypeError, ValueError) as exc:
        raise RequestError(f"invalid sampling parameters: {exc}") from exc


def _choice(out: Any, index: int, chat: bool) -> dict[str, Any]:
    c = out.outputs[index]
    d: dict[str, Any] = {"index": index, "finish_reason": c.finish_reason}
    if chat:
        d["message"] = {"role": "assistant", "content": c.text}
    else:
        d["text"] = c.text
    result = getattr(c, "refine", None)
    if result is not None:
        d["refine"] = result.to_dict()
    return d


class RequestCancelled(Exception):
    """The client disconnected: its work stops and its engine requests are aborted."""


class Engine:
    """What the server serves with, built in its event loop (:meth:`start`): the ``AsyncLLM``, the
    :class:`~refine.backends.vllm.transport.AsyncTransport` that refinements reach it through, the
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

        from .backends.vllm import AsyncTransport, VLLMBackend, make_async_engine

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
        from .api import refine_tokens
        from .backends.vllm import EngineCancelled

        if cancel.is_set():
            raise EngineCancelled("the request was cancelled")
        with self.transport.limits(config.budget.max_seconds, cancel):
            return refine_tokens(self.backend, prompt, output, config)


async def _until_disconnected(request: Any, every: float = 0.1) -> None:
    import asyncio

    while not await request.is_disconnected():
        await asyncio.sleep(every)


def build_app(engine: Engine, model_name: str, limits: RequestLimits | None = None, api_key: str | None = None,
              defaults: Mapping[str, Any] | None = None, plugins: Any = None):
    """The FastAPI app over an :class:`Engine`, started in the app's lifespan and stopped after it.

    ``defaults``: refine options applied to every request (checked with
    :func:`refine.integrations.vllm.prepare_defaults` first); ``plugins``: import paths requests may name
    (the operator's); ``limits``: the caps. With ``api_key``, every ``/v1`` endpoint wants
    ``Authorization: Bearer <api_key>``; ``/health`` and ``/metrics`` stay open, as in ``vllm serve``.
    """
    import asyncio
    import contextlib
    import hmac

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    from .api import resolve_scorer
    from .backends.hf import conversation_ids
    from .integrations.vllm import refined_completion, request_config
    from .serve_metrics import ServerMetrics

    limits = limits or RequestLimits()
    plugins = frozenset(plugins or ())
    metrics = ServerMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        engine.start(on_abort=metrics.engine_aborted.inc)
        metrics.engine_outstanding.set_function(lambda: engine.transport.outstanding)
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="refine", description=__doc__, lifespan=lifespan)

    async def read_body(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.body_bytes:
            raise RequestError(f"the request body ({declared} bytes) is over this server's cap of "
                               f"{limits.body_bytes} bytes", status=413)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limits.body_bytes:
                raise RequestError(f"the request body is over this server's cap of {limits.body_bytes} bytes",
                                   status=413)
        return parse_body(bytes(raw))

    def prompt_ids(body: dict[str, Any], chat: bool) -> list[list[int]]:
        tokenizer = engine.tokenizer
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages):
                raise RequestError("`messages` has to be a non-empty list of {\"role\": ..., \"content\": ...} "
                                   "objects with string values", "messages")
            try:
                return [conversation_ids(tokenizer, messages)]
            except Exception as exc:  # the template rejects the conversation (roles, order), or there is none
                raise RequestError(f"`messages` cannot be formatted with the model's chat template: {exc}",
                                   "messages") from exc
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise RequestError("`prompt` has to be a non-empty string or list of strings", "prompt")
        return [list(tokenizer.encode(p)) for p in prompts]

    def prepare(body: dict[str, Any], chat: bool) -> tuple[list[list[int]], Any, Any]:
        """Check a request (400s) and turn it into prompt ids, ``SamplingParams`` and its refine config."""
        model = body.get("model")
        if model is not None and model != model_name:
            raise RequestError(f"the model {model!r} does not exist; this server serves {model_name!r}", "model",
                               code="model_not_found")
        if body.get("stream"):
            raise RequestError("`stream: true` is not supported by this server; send the request without it",
                               "stream")
        params = sampling_params(body)
        ids = prompt_ids(body, chat)
        longest = max(len(p) for p in ids)
        limits.check_request(max_tokens=params.max_tokens, choices=params.n * len(ids), prompt_tokens=longest)
        if longest + params.max_tokens > engine.context:
            raise RequestError(f"the prompt ({longest} tokens) + `max_tokens` ({params.max_tokens}) exceed the "
                               f"model's context of {engine.context} tokens", "max_tokens")
        config = request_config(params, defaults=defaults, plugins=plugins, limits=limits)
        return ids, params, None if config is None else resolve_scorer(config)

    async def run(body: dict[str, Any], chat: bool, cancel: threading.Event) -> JSONResponse:
        ids, params, config = prepare(body, chat)
        # the initial outputs: straight from the engine, batched with everything else it serves
        outs = list(await asyncio.gather(*(engine.generate(p, params) for p in ids)))
        if config is not None:
            loop = asyncio.get_running_loop()
            eos_ids = engine.backend.tokenizer.eos_ids
            def refine_one(prompt: list[int], output: list[int]) -> Any:
                with metrics.refinements_running.track_inprogress():
                    return engine.refine(prompt, output, config, cancel)

            jobs = [(i, j, loop.run_in_executor(engine.pool, refine_one, list(out.prompt_token_ids or p),
                                                 list(c.token_ids)))
                    for i, (out, p) in enumerate(zip(outs, ids)) for j, c in enumerate(out.outputs) if c.token_ids]
            try:
                results = await asyncio.gather(*(job for _, _, job in jobs))
            except BaseException:
                cancel.set()  # the other refinements of this request stop too
                raise
            for (i, j, _), res in zip(jobs, results):
                metrics.observe_result(res)
                new = copy.copy(outs[i])
                new.outputs = list(new.outputs)
                new.outputs[j] = refined_completion(outs[i].outputs[j], res, eos_ids)
                outs[i] = new
        choices = []
        for out in outs:
            choices += [_choice(out, i, chat) for i in range(len(out.outputs))]
        for k, ch in enumerate(choices):
            ch["index"] = k
        n_prompt = sum(len(o.prompt_token_ids or []) for o in outs)
        n_completion = sum(len(c.token_ids) for o in outs for c in o.outputs)
        return JSONResponse({
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                      "total_tokens": n_prompt + n_completion},
        })

    def authorized(request: Request) -> bool:
        if api_key is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    async def serve_request(request: Request, body: dict[str, Any], chat: bool) -> JSONResponse:
        """Serve ``body``; a client that goes away cancels it: awaited engine requests are cancelled (vLLM
        aborts them) and refinements abort their engine requests and stop."""
        from .backends.vllm import EngineCancelled

        cancel = threading.Event()
        work = asyncio.ensure_future(run(body, chat, cancel))
        watch = asyncio.ensure_future(_until_disconnected(request))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not work.done():
            cancel.set()
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            raise RequestCancelled
        try:
            return work.result()
        except EngineCancelled as exc:
            raise RequestCancelled from exc

    async def handle(request: Request, chat: bool) -> Response:
        endpoint = "chat" if chat else "completions"
        started = time.perf_counter()
        metrics.in_flight.inc()
        try:
            response = await answer(request, chat)
        except RequestCancelled:
            metrics.cancelled.labels(endpoint).inc()
            log.info("client went away: request cancelled")
            response = Response(status_code=499)
        finally:
            metrics.in_flight.dec()
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    async def answer(request: Request, chat: bool) -> JSONResponse:
        try:
            if not authorized(request):
                raise RequestError("a valid API key is required: send `Authorization: Bearer <key>`",
                                   status=401, code="invalid_api_key")
            return await serve_request(request, await read_body(request), chat)
        except RequestError as exc:
            return JSONResponse(status_code=exc.status, content=exc.body())
        except LimitError as exc:
            return JSONResponse(status_code=400, content=RequestError(str(exc), exc.param).body())
        except (ConfigError, InputError) as exc:  # refine's messages open with the option they are about
            named = re.match(r"`([\w.]+)`", str(exc))
            return JSONResponse(status_code=400, content=RequestError(str(exc), named and named.group(1)).body())
        except RequestCancelled:
            raise
        except UpstreamError:  # the model server behind a front failed: log it whole, answer 502
            return logged_failure(502, "request %s failed upstream", "the model server failed")
        except Exception:  # an engine failure: log it whole, answer 500, keep serving
            return logged_failure(500, "request %s failed", "internal error")

    def logged_failure(status: int, log_message: str, what: str) -> JSONResponse:
        """Log the exception being handled under a fresh reference and answer ``status`` naming that reference."""
        ref = uuid.uuid4().hex[:12]
        log.exception(log_message, ref)
        return JSONResponse(status_code=status, content=RequestError(
            f"{what} while serving the request (reference {ref} in the server log)", status=status).body())

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorized(request):
            error = RequestError("a valid API key is required: send `Authorization: Bearer <key>`", status=401,
                                 code="invalid_api_key")
            return JSONResponse(status_code=401, content=error.body())
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "refine",
                                            "max_model_len": engine.context}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


def limits_from_args(args) -> RequestLimits:
    """:class:`RequestLimits` from the ``--cap-*`` flags."""
    import dataclasses

    caps = {}
    for f in dataclasses.fields(RequestLimits):
        value = getattr(args, "cap_" + f.name, None)
        if value is not None:
            caps[f.name] = value
    return RequestLimits(**caps)


#: vLLM engine arguments ``refine serve`` passes through (flag ``--tensor-parallel-size`` -> ``vllm.LLM(
#: tensor_parallel_size=...)``): how the engine scales is vLLM's business
ENGINE_ARGS: dict[str, tuple[type, str]] = {
    "tensor_parallel_size": (int, "GPUs one model replica is split across"),
    "pipeline_parallel_size": (int, "pipeline stages"),
    "data_parallel_size": (int, "model replicas"),
    "max_model_len": (int, "context length (refine's default 2048)"),
    "gpu_memory_utilization": (float, "share of accelerator memory (on CPU: of RAM) the engine claims"),
    "kv_cache_memory_bytes": (int, "KV cache size in bytes (instead of a memory share)"),
    "dtype": (str, "weights and activations dtype (refine's default float32: exact scores)"),
    "quantization": (str, "vLLM quantization method"),
}


def engine_kwargs(args) -> dict[str, Any]:
    """The engine arguments given on the command line; several processes when the model is split or
    replicated."""
    kw = {name: getattr(args, name) for name in ENGINE_ARGS if getattr(args, name, None) is not None}
    if any(kw.get(k, 1) > 1 for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")):
        kw["multiprocessing"] = True
    return kw


def cmd_serve(args) -> int:
    from .config import plugin_paths
    from .errors import require

    require("vllm", VLLM_INSTALL)
    uvicorn = require("uvicorn", pip_extra("vllm"))
    from .integrations.vllm import prepare_defaults
    from .models import resolve

    try:
        defaults = json.loads(args.refine) if args.refine else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"`--refine` is not valid JSON: {exc}") from exc
    if defaults is not None and not isinstance(defaults, dict):
        raise ConfigError(f"`--refine` has to be a JSON object of refine options, but is {defaults!r}")
    limits = limits_from_args(args)
    for path in args.allow_plugin:
        module, _, attr = path.partition(":")
        if not (module and attr):
            raise ConfigError(f"`--allow-plugin` takes 'module:Class' import paths, but got {path!r}")
    plugins = set(args.allow_plugin) | plugin_paths(defaults)
    api_key = args.api_key or os.environ.get("REFINE_API_KEY") or None
    defaults = prepare_defaults(defaults, limits)  # fails before an engine starts
    if args.upstream:
        engine = upstream_engine(args)
        name = engine.model_name
    else:
        for flag in ("upstream_api_key", "upstream_model"):
            if getattr(args, flag, None):
                raise ConfigError(f"`--{flag.replace('_', '-')}` goes with `--upstream URL`")
        path = resolve(args.model)
        engine = Engine(str(path), engine_kwargs(args), args.max_concurrent_refinements)
        name = path.name
    app = build_app(engine, args.served_model_name or name, limits, api_key, defaults, plugins)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def upstream_engine(args) -> Any:
    """The connected :class:`~refine.serve_upstream.UpstreamEngine` for ``--upstream`` (engine arguments are
    refused: they configure the upstream, where they were given to ``vllm serve``)."""
    from .models import resolve
    from .serve_upstream import UpstreamEngine

    given = [name for name in ENGINE_ARGS if getattr(args, name, None) is not None]
    if given:
        raise ConfigError(f"`--{given[0].replace('_', '-')}` is an engine argument: with `--upstream` the engine is "
                          "the upstream's, so give it to `vllm serve` there")
    key = args.upstream_api_key or os.environ.get("REFINE_UPSTREAM_API_KEY") or None
    tokenizer = str(resolve(args.model)) if args.model else None
    engine = UpstreamEngine(args.upstream, tokenizer, key, args.upstream_model, args.max_concurrent_refinements)
    engine.connect()
    return engine


def _field_docs(cls: type) -> dict[str, str]:
    """``name -> description`` from the ``Attributes:`` section of a dataclass's docstring."""
    import inspect
    import re

    docs: dict[str, str] = {}
    name = None
    for line in inspect.getdoc(cls).split("Attributes:", 1)[-1].splitlines():
        m = re.match(r"    (\w+): (.*)", line)
        if m:
            name, docs[m.group(1)] = m.group(1), m.group(2)
        elif name and line.startswith("        "):
            docs[name] += " " + line.strip()
    return docs


def add_parser(sub) -> None:
    import dataclasses

    p = sub.add_parser("serve", help="OpenAI-compatible server with per-request refinement (needs vLLM)")
    p.add_argument("--model", default=None, help="local model folder or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--refine", default=None,
                   help="JSON refine options applied to every request (requests' own vllm_xargs override them); "
                        "import paths named here are trusted")
    p.add_argument("--allow-plugin", action="append", default=[], metavar="MODULE:CLASS",
                   help="an import path (strategy, move or objective term) that requests may name; repeatable. "
                        "Requests can otherwise name only registered pieces")
    p.add_argument("--max-concurrent-refinements", type=int, default=16, metavar="N",
                   help="refinements running at once, their engine requests batched together (more wait for a "
                        "free slot; unrefined requests never wait for one). Default: 16")
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /v1 endpoints (default: $REFINE_API_KEY, else none)")
    front = p.add_argument_group(
        "front", "serve in front of a running `vllm serve` (started with --logits-processors "
                 "refine.backends.vllm:ForcedTokensProcessor) instead of starting an engine")
    front.add_argument("--upstream", default=None, metavar="URL",
                       help="base URL of the vLLM server, e.g. http://10.0.0.5:8000; --model is then only the "
                            "model's local folder for its tokenizer (default: the upstream's model path, when it is "
                            "a folder on this machine)")
    front.add_argument("--upstream-api-key", default=None, metavar="KEY",
                       help="the upstream's API key (default: $REFINE_UPSTREAM_API_KEY, else none)")
    front.add_argument("--upstream-model", default=None, metavar="NAME",
                       help="the upstream model to use when it serves several")
    engine = p.add_argument_group("engine", "vLLM engine arguments, passed through")
    for name, (kind, what) in ENGINE_ARGS.items():
        engine.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=what)
    caps = p.add_argument_group("caps", "the most one request may ask for (a request over a cap gets HTTP 400)")
    docs = _field_docs(RequestLimits)
    for f in dataclasses.fields(RequestLimits):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = json.loads if f.name == "strategy_options" else type(default)
        caps.add_argument("--cap-" + f.name.replace("_", "-"), dest="cap_" + f.name, type=kind, default=None,
                          metavar="JSON" if f.name == "strategy_options" else "N",
                          help=f"{docs.get(f.name, '').replace('``', '')} Default: "
                               f"{json.dumps(default) if isinstance(default, dict) else default}".strip())
    p.set_defaults(func=cmd_serve)
