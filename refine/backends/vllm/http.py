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
:class:`~refine.backends.vllm.transport.AsyncTransport`, whose machinery this transport shares.

Deadlines and cancelling
------------------------
:meth:`~EngineTransport.limits` works as for :class:`~refine.backends.vllm.transport.AsyncTransport`: when the
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
import json
import os
import queue
import threading
import types
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from ...errors import UpstreamError, require
from .processor import PROCESSOR_FQCN, flat_force_spec, spec_from_extra_args
from .transport import AsyncTransport

httpx = require("httpx", "httpx")

__all__ = ["HTTPTransport", "Logprob", "UpstreamError", "UpstreamModelConfig", "completion_body",
           "generated_logprobs", "prompt_logprobs", "request_output"]

#: what ``return_tokens_as_token_ids`` puts before a token id
TOKEN_ID_PREFIX = "token_id:"
#: the largest ``max_logprobs`` :meth:`HTTPTransport.connect` looks for when it is not given
MAX_LOGPROBS_SEARCH = 256
#: the text whose tokenization is compared with the upstream's
TOKENIZER_PROBE = "Refine checks: naïve café, 12345 + 0.5 = ?\n\tdone."


class Logprob(NamedTuple):
    """One top-K entry, as :func:`~refine.backends.logprobs.scores_from_logprobs` reads vLLM's ``Logprob``."""

    logprob: float
    rank: int


@dataclass
class UpstreamModelConfig:
    """What a :class:`~refine.backends.vllm.VLLMBackend` reads from an engine's ``ModelConfig``, for a model served
    upstream (``HTTPTransport.vllm_config.model_config``).

    Attributes:
        model: the model's name on the upstream (the ``model`` of every request).
        max_model_len: its context length (``/v1/models``).
        max_logprobs: the largest ``logprobs``/``prompt_logprobs`` the upstream accepts.
        vocab_size: the model's output rows (``config.json``; the tokenizer's length when there is none).
        generation_config: ``generation_config.json`` of the local folder (its ``eos_token_id`` counts as EOS).
        logits_processors: ``[PROCESSOR_FQCN]`` when the probe found the forcing processor, else empty.
        logprobs_mode: always ``"raw_logprobs"`` (checked by the probe).
    """

    model: str
    max_model_len: int
    max_logprobs: int
    vocab_size: int
    generation_config: dict[str, Any] = field(default_factory=dict)
    logits_processors: list[str] = field(default_factory=list)
    logprobs_mode: str = "raw_logprobs"

    def get_vocab_size(self) -> int:
        return self.vocab_size

    def try_get_generation_config(self) -> dict[str, Any]:
        return self.generation_config


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


def _cached(usage: dict[str, Any] | None) -> int | None:
    details = (usage or {}).get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    return None if cached is None else int(cached)


def request_output(prompt: Sequence[int], response: dict[str, Any], k: int | None) -> Any:
    """A ``RequestOutput``-shaped object from a (non-streamed) ``/v1/completions`` response: ``prompt_token_ids``,
    ``num_cached_tokens``, ``prompt_logprobs``, ``finished`` and ``outputs`` (``token_ids``, ``text``,
    ``logprobs``, ``finish_reason``, ``stop_reason``, one per choice); ``k``: the request's ``logprobs``."""
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
        num_cached_tokens=_cached(response.get("usage")),
        prompt_logprobs=prompt_logprobs(first.get("prompt_logprobs")),
        outputs=outputs, finished=True)


def _error_text(status: int, text: str) -> str:
    try:
        err = json.loads(text).get("error")
        message = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {status}: {message or text[:500]}"


# ---------------------------------------------------------------------------------------------- the transport

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
        poll_s, on_abort: as for :class:`~refine.backends.vllm.transport.AsyncTransport`.
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
        self.url = url
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = float(timeout_s)
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

    def _sync(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        """One blocking request from the calling thread (start-up only): ``(200, parsed JSON)`` or
        ``(status, error text)``. Unreachable or refusing the key: :class:`UpstreamError`."""
        try:
            with httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout_s) as client:
                r = client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot reach the upstream vLLM server at {self.url}: {exc!r}") from exc
        if r.status_code == 401:
            raise UpstreamError(f"the upstream at {self.url} refused the API key ({_error_text(401, r.text)}): "
                                "pass the key it was started with (--upstream-api-key / api_key=)")
        if r.status_code != 200:
            return r.status_code, _error_text(r.status_code, r.text)
        try:
            return 200, r.json()
        except ValueError as exc:
            raise UpstreamError(f"the upstream at {self.url} answered {method} {path} with something that is not "
                                f"JSON: {r.text[:200]!r}") from exc

    def connect(self) -> None:
        """Ask the upstream what it serves, load and check the local tokenizer, find ``max_logprobs``, and probe
        for the forcing processor (see the module docstring). Raises :class:`UpstreamError`."""
        status, models = self._sync("GET", "/v1/models")
        if status != 200 or not isinstance(models, dict):
            raise UpstreamError(f"the upstream at {self.url} does not answer GET /v1/models like a vLLM server: "
                                f"{models}")
        cards = [c for c in (models.get("data") or []) if isinstance(c, dict) and c.get("id")]
        if self._want_model is not None:
            cards = [c for c in cards if c["id"] == self._want_model]
            if not cards:
                raise UpstreamError(f"the upstream at {self.url} does not serve the model {self._want_model!r}")
        if len(cards) != 1:
            raise UpstreamError(f"the upstream at {self.url} serves {[c['id'] for c in cards]}: name the model")
        card = cards[0]
        model = str(card["id"])
        if not card.get("max_model_len"):
            raise UpstreamError(f"the upstream at {self.url} does not report its model's max_model_len")
        self.tokenizer, folder = self._load_tokenizer(card.get("root"))
        self._check_tokenizer(model)
        vocab, generation = _folder_config(folder, self.tokenizer)
        self.model_config = UpstreamModelConfig(model=model, max_model_len=int(card["max_model_len"]),
                                                max_logprobs=1, vocab_size=vocab, generation_config=generation)
        self.model_config.max_logprobs = self._find_max_logprobs(model)
        self.forcing, self.forcing_problem = self._probe(model)
        self.model_config.logits_processors = [PROCESSOR_FQCN] if self.forcing else []

    def _load_tokenizer(self, root: Any) -> tuple[Any, str | None]:
        given = self._tokenizer_arg
        if given is not None and not isinstance(given, (str, os.PathLike)):
            return given, getattr(given, "name_or_path", None)
        folder = str(given) if given is not None else (str(root) if root and os.path.isdir(str(root)) else None)
        if folder is None:
            raise UpstreamError(f"the upstream serves a model from {root!r}, which is not a folder on this machine: "
                                "give the model's local folder for its tokenizer (--model / tokenizer=)")
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(folder), folder
        except Exception as exc:  # noqa: BLE001 - any failure: name the folder
            raise UpstreamError(f"cannot load a tokenizer from {folder!r}: {exc}") from exc

    def _check_tokenizer(self, model: str) -> None:
        status, got = self._sync("POST", "/tokenize", json={"model": model, "prompt": TOKENIZER_PROBE,
                                                             "add_special_tokens": False})
        if status == 404:
            return  # an upstream without /tokenize: nothing to compare with
        if status != 200:
            raise UpstreamError(f"the upstream at {self.url} failed POST /tokenize: {got}")
        theirs = [int(t) for t in got.get("tokens") or []]
        ours = list(self.tokenizer.encode(TOKENIZER_PROBE, add_special_tokens=False))
        if theirs != ours:
            raise UpstreamError(f"the local tokenizer ({getattr(self.tokenizer, 'name_or_path', '?')}) does not "
                                f"tokenize like the upstream's model {model!r} ({ours[:8]}... vs {theirs[:8]}...): "
                                "give the folder of the model the upstream serves")

    def _probe_prompt(self) -> list[int]:
        ids = list(self.tokenizer.encode("The capital of France is", add_special_tokens=True))
        return ids or [int(self.tokenizer.eos_token_id or 0)]

    def _find_max_logprobs(self, model: str) -> int:
        """The given ``max_logprobs`` (checked), else the largest accepted value up to :data:`MAX_LOGPROBS_SEARCH`
        (bisection with one-token requests; only HTTP 400 counts as a refusal)."""
        prompt = self._probe_prompt()

        def accepted(k: int) -> bool:
            status, got = self._sync("POST", "/v1/completions", json={
                "model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": k})
            if status not in (200, 400):
                raise UpstreamError(f"the upstream at {self.url} failed a completion: {got}")
            return status == 200

        want = self._want_max_logprobs
        if want is not None:
            if not accepted(want):
                raise UpstreamError(f"the upstream at {self.url} refuses logprobs={want}: start it with "
                                    f"--max-logprobs {want} or more, or ask for fewer")
            return want
        lo, hi = 0, MAX_LOGPROBS_SEARCH  # accepted(lo) (0: vacuously), the answer is in [lo, hi]
        if accepted(hi):
            return hi
        hi -= 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if accepted(mid):
                lo = mid
            else:
                hi = mid - 1
        if lo < 1:
            raise UpstreamError(f"the upstream at {self.url} returns no log-probabilities (logprobs=1 refused)")
        return lo

    def _probe(self, model: str) -> tuple[bool, str | None]:
        """Force a token the model would not choose; (forcing works, why not). Raises when the upstream's
        log-probabilities are not the model's raw ones."""
        import math

        prompt = self._probe_prompt()
        k = self.model_config.max_logprobs
        base = {"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0, "ignore_eos": True,
                "logprobs": k, "return_token_ids": True, "return_tokens_as_token_ids": True}
        status, plain = self._sync("POST", "/v1/completions", json=base)
        if status != 200:
            raise UpstreamError(f"the upstream at {self.url} failed a probe completion: {plain}")
        free = request_output(prompt, plain, k).outputs[0]
        top = free.logprobs[0]
        if math.log(sum(math.exp(v.logprob) for v in top.values())) > 1e-2:  # probabilities sum to at most 1
            raise UpstreamError(f"the upstream at {self.url} returns logits, not log-probabilities: start it with "
                                "--logprobs-mode raw_logprobs (vLLM's default)")
        target = max(top, key=lambda t: (top[t].rank, t))  # the least likely of the top K
        if target == free.token_ids[0]:
            return False, "the probe found no token to force (a top-K of one token)"
        forcing = {**base, "vllm_xargs": flat_force_spec({"force": [target, target]})}
        status, forced = self._sync("POST", "/v1/completions", json=forcing)
        if status != 200:
            raise UpstreamError(f"the upstream at {self.url} refused a forcing request: {forced}")
        got = request_output(prompt, forced, k).outputs[0]
        if got.token_ids != [target, target]:
            return False, (f"the upstream at {self.url} does not force tokens (asked for {[target, target]}, got "
                           f"{got.token_ids}): start vllm serve with --logits-processors {PROCESSOR_FQCN}, refine "
                           "installed in its environment")
        # the same prompt in another batch: equal up to the kernels' numerics (~1e-2 in bf16 on GPUs); after the
        # processors the forced token, the only one left, would have log-probability 0, the model gives it < -0.69
        if abs(got.logprobs[0][target].logprob - top[target].logprob) > 0.1:
            raise UpstreamError(f"the upstream at {self.url} reports the forced token's log-probability after the "
                                f"logits processors ({got.logprobs[0][target].logprob:.4f}, the model gives "
                                f"{top[target].logprob:.4f}): start it with --logprobs-mode raw_logprobs")
        return True, None

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
                    raise UpstreamError(f"the upstream refused a request: {_error_text(r.status_code, r.text)}")
                sink.put((i, request_output(prompt, r.json(), sp.logprobs)))
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
                raise UpstreamError(f"the upstream refused a request: {_error_text(r.status_code, text)}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise UpstreamError(f"the upstream failed a request: {_error_text(500, data)}")
                cached = _cached(chunk.get("usage"))
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


def _folder_config(folder: str | None, tokenizer: Any) -> tuple[int, dict[str, Any]]:
    """(vocabulary size, generation config) of a local model folder; the tokenizer's length and ``{}`` for what
    it lacks."""
    vocab = len(tokenizer)
    generation: dict[str, Any] = {}
    if folder and os.path.isdir(folder):
        path = os.path.join(folder, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)
            cfg = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
            if isinstance(cfg.get("vocab_size"), int):
                vocab = int(cfg["vocab_size"])
        path = os.path.join(folder, "generation_config.json")
        if os.path.exists(path):
            with open(path) as f:
                generation = json.load(f)
    return vocab, generation
