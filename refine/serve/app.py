"""The HTTP app of ``refine serve`` (:func:`build_app`): FastAPI endpoints over an
:class:`~refine.serve.engine.Engine`, the body-size cap, the API key, cancelling the work of a client that left,
and every failure turned into an OpenAI-shaped answer (see :mod:`refine.serve`)."""


import copy
import logging
import re
import sys
import threading
import time
import uuid
from typing import Any, Mapping

from ..errors import ConfigError, InputError, UpstreamError
from ..limits import LimitError, RequestLimits
from .engine import Engine
from .protocol import (DEFAULT_MAX_TOKENS, RequestError, completion_response, parse_body, prompt_ids,
                       sampling_params)

log = logging.getLogger("refine.serve")


class RequestCancelled(Exception):
    """The client disconnected: its work stops and its engine requests are aborted."""


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

    from ..api import resolve_scorer
    from ..integrations.vllm import refined_completion, request_config
    from .metrics import ServerMetrics

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

    app = FastAPI(title="refine", description=sys.modules[__package__].__doc__, lifespan=lifespan)

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

    def prepare(body: dict[str, Any], chat: bool) -> tuple[list[list[int]], Any, Any]:
        """Check a request (400s) and turn it into prompt ids, ``SamplingParams`` and its refine config."""
        model = body.get("model")
        if model is not None and model != model_name:
            raise RequestError(f"the model {model!r} does not exist; this server serves {model_name!r}", "model",
                               code="model_not_found")
        if body.get("stream"):
            raise RequestError("`stream: true` is not supported by this server; send the request without it",
                               "stream")
        params = sampling_params(body, default_max_tokens=min(DEFAULT_MAX_TOKENS, limits.max_tokens))
        ids = prompt_ids(engine.tokenizer, body, chat)
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
        return JSONResponse(completion_response(outs, chat, model_name))

    def authorized(request: Request) -> bool:
        if api_key is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    async def serve_request(request: Request, body: dict[str, Any], chat: bool) -> JSONResponse:
        """Serve ``body``; a client that goes away cancels it: awaited engine requests are cancelled (vLLM
        aborts them) and refinements abort their engine requests and stop."""
        from ..backends.vllm import EngineCancelled

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
