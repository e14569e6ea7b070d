"""The OpenAI surface of ``refine serve`` as data: request bodies checked and read (JSON object, field types,
prompts, ``SamplingParams`` with refine options only in ``vllm_xargs``), the OpenAI-shaped error every refusal
becomes (:class:`RequestError`), and the response object. No HTTP and no engine here (:mod:`refine.serve.app`)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Mapping, Sequence

#: ``max_tokens`` of a request that sets none (lowered to the server's cap where that is smaller)
DEFAULT_MAX_TOKENS = 64

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
    except RecursionError as exc:
        raise RequestError("the request body nests too deeply to be read") from exc
    if not isinstance(body, dict):
        raise RequestError(f"the request body has to be a JSON object, but is a {type(body).__name__}")
    return body


def _invalid_value_errors() -> tuple[type[BaseException], ...]:
    """What ``SamplingParams`` raises for a value out of range: ``ValueError``, and vLLM's own validation error
    (not a ``ValueError`` in every vLLM version)."""
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:
        return (TypeError, ValueError, OverflowError)
    return (TypeError, ValueError, OverflowError, VLLMValidationError)


def sampling_params(body: Mapping[str, Any], default_max_tokens: int = DEFAULT_MAX_TOKENS):
    """``SamplingParams`` from an OpenAI request body (refine options travel in ``vllm_xargs``); a request
    without ``max_tokens`` gets ``default_max_tokens``."""
    from vllm import SamplingParams

    from ..integrations.vllm import FLAT_PREFIX, REFINE_KEY

    for name, types in SAMPLING_FIELDS.items():
        _check_type(body, name, types)
    kw = {k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None}
    kw.setdefault("max_tokens", default_max_tokens)
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
    except _invalid_value_errors() as exc:
        raise RequestError(f"invalid sampling parameters: {exc}") from exc


def prompt_ids(tokenizer: Any, body: Mapping[str, Any], chat: bool) -> list[list[int]]:
    """The prompts of a request as token ids: a chat request's ``messages`` through the chat template (one
    prompt), a completion request's ``prompt`` (a string or a list of them). Malformed: :class:`RequestError`."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise RequestError("`messages` has to be a non-empty list of {\"role\": ..., \"content\": ...} "
                               "objects with string values", "messages")
        from ..backends.hf import conversation_ids

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


def choice(out: Any, index: int, chat: bool) -> dict[str, Any]:
    """Completion ``index`` of a ``RequestOutput`` as an OpenAI choice (with its ``refine`` object when refined)."""
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


def completion_response(outs: Sequence[Any], chat: bool, model_name: str) -> dict[str, Any]:
    """The OpenAI response object for a request's final ``RequestOutput`` s (their completions, refined or
    not, numbered across prompts), with token usage."""
    choices = []
    for out in outs:
        choices += [choice(out, i, chat) for i in range(len(out.outputs))]
    for k, ch in enumerate(choices):
        ch["index"] = k
    n_prompt = sum(len(o.prompt_token_ids or []) for o in outs)
    n_completion = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                  "total_tokens": n_prompt + n_completion},
    }
