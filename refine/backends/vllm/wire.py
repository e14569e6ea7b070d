"""The OpenAI completions format as refine speaks it to a ``vllm serve`` deployment: one engine request as a
``/v1/completions`` body (:func:`completion_body`), and responses read back into ``RequestOutput``-shaped objects
(:func:`request_output`, :func:`generated_logprobs`, :func:`prompt_logprobs`). Pure functions: no connection, no
state (:mod:`refine.backends.vllm.http` sends and receives)."""

from __future__ import annotations

import json
import types
from typing import Any, NamedTuple, Sequence

from vllm import SamplingParams

from ...errors import UpstreamError
from .processor import flat_force_spec, spec_from_extra_args

#: what ``return_tokens_as_token_ids`` puts before a token id
TOKEN_ID_PREFIX = "token_id:"


class Logprob(NamedTuple):
    """One top-K entry, as :func:`~refine.backends.logprobs.scores_from_logprobs` reads vLLM's ``Logprob``."""

    logprob: float
    rank: int



# ---------------------------------------------------------------------------------------------- requests

def completion_body(model: str, prompt: Sequence[int], sp: SamplingParams, *, stream: bool = False) -> dict[str, Any]:
    """The ``/v1/completions`` request body for one engine request: ``prompt`` (token ids) with the sampling
    parameters ``sp``.

    Sent: ``max_tokens``, ``n``, ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``seed``, the three penalties,
    ``min_tokens``, ``stop``, ``stop_token_ids``, ``ignore_eos``, ``skip_special_tokens``,
    ``include_stop_str_in_output``, ``logprobs``, ``prompt_logprobs``, and a forcing spec from ``sp.extra_args``
    in the flat encoding, without its ``key`` (entropy records cannot be read over HTTP). Other ``extra_args``
    (refine's own request options) stay here. Token ids always come back as ids (``return_token_ids``,
    ``return_tokens_as_token_ids``). ``stream``: a streamed request (with the usage chunk at the end).
    """
    body: dict[str, Any] = {
        "model": model,
        "prompt": [int(t) for t in prompt],
        "max_tokens": sp.max_tokens,
        "n": sp.n,
        "temperature": sp.temperature,
        "top_p": sp.top_p,
        "top_k": sp.top_k,
        "min_p": sp.min_p,
        "seed": sp.seed,
        "presence_penalty": sp.presence_penalty,
        "frequency_penalty": sp.frequency_penalty,
        "repetition_penalty": sp.repetition_penalty,
        "min_tokens": sp.min_tokens,
        "stop": list(sp.stop) if sp.stop else None,
        "stop_token_ids": [int(t) for t in sp.stop_token_ids] if sp.stop_token_ids else None,
        "ignore_eos": sp.ignore_eos,
        "skip_special_tokens": sp.skip_special_tokens,
        "include_stop_str_in_output": sp.include_stop_str_in_output,
        "logprobs": sp.logprobs,
        "prompt_logprobs": sp.prompt_logprobs,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
    }
    spec = spec_from_extra_args(sp.extra_args)
    if spec is not None:
        if not isinstance(spec, dict):
            raise ValueError(f"a forcing spec is a dict (see force_spec()), got {type(spec).__name__}")
        body["vllm_xargs"] = flat_force_spec({k: v for k, v in spec.items() if k != "key"})
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return {k: v for k, v in body.items() if v is not None}


# ---------------------------------------------------------------------------------------------- responses

def _token_id(key: str) -> int:
    if not key.startswith(TOKEN_ID_PREFIX):
        raise UpstreamError(f"the upstream returned the token {key!r} where a {TOKEN_ID_PREFIX}<id> was asked for "
                            "(return_tokens_as_token_ids)")
    return int(key[len(TOKEN_ID_PREFIX):])


def generated_logprobs(token_ids: Sequence[int], logprobs: dict[str, Any] | None, k: int
                       ) -> list[dict[int, Logprob] | None] | None:
    """Per generated token, ``{token_id: Logprob}`` from a completion choice's ``logprobs`` object (``tokens``,
    ``token_logprobs``, ``top_logprobs`` keyed ``"token_id:<id>"``), for ``k`` = the request's ``logprobs``.

    vLLM lists the top ``k`` and the sampled token; ranks are not sent, so they are given in order of value, and the
    sampled token gets rank ``k + 1`` when the list holds ``k + 1`` entries (it is then outside the top ``k``).
    """
    if logprobs is None:
        return None
    tops = logprobs.get("top_logprobs") or []
    sampled = logprobs.get("token_logprobs") or []
    if len(tops) != len(token_ids) or len(sampled) != len(token_ids):
        raise UpstreamError(f"the upstream returned log-probabilities for {len(tops)} of {len(token_ids)} tokens")
    entries: list[dict[int, Logprob] | None] = []
    for tok, top, lp in zip(token_ids, tops, sampled):
        if top is None:
            entries.append(None)
            continue
        values = {_token_id(key): float(v) for key, v in top.items()}
        if lp is not None:
            values.setdefault(int(tok), float(lp))
        outside = len(values) > k and int(tok) in values
        ranked = sorted(((i, v) for i, v in values.items() if not (outside and i == int(tok))),
                        key=lambda iv: (-iv[1], iv[0]))
        entry = {i: Logprob(v, r + 1) for r, (i, v) in enumerate(ranked)}
        if outside:
            entry[int(tok)] = Logprob(values[int(tok)], k + 1)
        entries.append(entry)
    return entries


def prompt_logprobs(entries: list[Any] | None) -> list[dict[int, Logprob] | None] | None:
    """A choice's ``prompt_logprobs`` (``[null, {"<id>": {"logprob", "rank", ...}}, ...]``) as ``{id: Logprob}``."""
    if entries is None:
        return None
    return [None if e is None else {int(i): Logprob(float(v["logprob"]), int(v["rank"])) for i, v in e.items()}
            for e in entries]


def cached_tokens(usage: dict[str, Any] | None) -> int | None:
    """Prefix-cache hits a response's ``usage`` reports (``prompt_tokens_details.cached_tokens``), or None."""
    details = (usage or {}).get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    return None if cached is None else int(cached)


def response_object(text: str | bytes) -> dict[str, Any]:
    """An upstream response body as the JSON object it has to be (anything else: :class:`UpstreamError`)."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UpstreamError(f"the upstream's response is not JSON: {str(text)[:200]!r}") from exc
    if not isinstance(body, dict):
        raise UpstreamError(f"the upstream's response is not a JSON object: {str(text)[:200]!r}")
    return body


def request_output(prompt: Sequence[int], response: Any, k: int | None) -> Any:
    """A ``RequestOutput``-shaped object from a (non-streamed) ``/v1/completions`` response: ``prompt_token_ids``,
    ``num_cached_tokens``, ``prompt_logprobs``, ``finished`` and ``outputs`` (``token_ids``, ``text``,
    ``logprobs``, ``finish_reason``, ``stop_reason``, one per choice); ``k``: the request's ``logprobs``. A
    response of another shape: :class:`UpstreamError`."""
    try:
        return _request_output(prompt, response, k)
    except UpstreamError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise UpstreamError(f"the upstream's response is malformed ({exc!r}): {str(response)[:200]}") from exc


def _request_output(prompt: Sequence[int], response: dict[str, Any], k: int | None) -> Any:
    choices = response.get("choices") or []
    if not choices:
        raise UpstreamError(f"the upstream's response has no choices: {str(response)[:300]}")
    outputs = []
    for c in choices:
        ids = c.get("token_ids")
        if ids is None:
            raise UpstreamError("the upstream's response has no `token_ids` (vLLM >= 0.10.2 sends them with "
                                "return_token_ids)")
        ids = [int(t) for t in ids]
        outputs.append(types.SimpleNamespace(
            index=int(c.get("index", len(outputs))), token_ids=ids, text=c.get("text", ""),
            logprobs=generated_logprobs(ids, c.get("logprobs"), k or 0) if k is not None else None,
            finish_reason=c.get("finish_reason"), stop_reason=c.get("stop_reason"), cumulative_logprob=None))
    first = choices[0]
    return types.SimpleNamespace(
        prompt_token_ids=[int(t) for t in (first.get("prompt_token_ids") or prompt)],
        num_cached_tokens=cached_tokens(response.get("usage")),
        prompt_logprobs=prompt_logprobs(first.get("prompt_logprobs")),
        outputs=outputs, finished=True)


def error_text(status: int, text: str) -> str:
    """An upstream's error response as one line: ``HTTP <status>: <its message>`` (the OpenAI ``error`` object's
    message when there is one)."""
    try:
        err = json.loads(text).get("error")
        message = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {status}: {message or text[:500]}"
