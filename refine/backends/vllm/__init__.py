"""vLLM backend: scoring and greedy re-decoding through ``vllm.LLM.generate``.

Scoring methods (``VLLMBackend(llm, method=...)``)
-------------------------------------------------
``"force"`` (default when the processor is registered): teacher forcing *during generation*.
A logits processor, :class:`ForcedTokensProcessor`, registered when the engine starts
(``LLM(logits_processors=[ForcedTokensProcessor])``; :func:`make_llm` does this), acts on
requests whose ``SamplingParams.extra_args[EXTRA_KEY]`` holds a spec (:func:`force_spec`): at
each forced step it masks every logit but the forced token, so the greedy request "generates"
exactly the given tokens. vLLM computes the returned ``logprobs`` from the model's raw logits
*before* any logits processor runs (``logprobs_mode="raw_logprobs"``, vLLM's default, which
:class:`VLLMBackend` insists on), so the forced token's log-probability and the top-k list are
the model's own, not the masked distribution's (checked against an fp32 HF forward: <1e-4).
The prompt ``prompt + row[:start]`` is served from vLLM's prefix cache when computed before.
Cost: one engine step per forced token (rows run in parallel).

``"prefill"``: each row goes in as a prompt with ``prompt_logprobs=K`` and
``skip_reading_prefix_cache=False``: one step, prefix cache reused. vLLM's prompt
log-probabilities are then valid only after the cached part (``num_cached_tokens``), so rows
whose cache hit reaches the positions to score are sent again without cache reading.

``"prompt_logprobs"``: the same without cache reading (vLLM's own default for prompt
log-probabilities): every row recomputes its whole prefill. Decoding always needs the processor.

Entropy
-------
With ``"force"`` the processor sees each step's full logits row, computes the exact entropy
(fp64 log-softmax of the fp32 logits, before its own masking) and records it under a
per-request key; the session collects the records after the call: directly when the engine
runs in this process (:func:`make_llm`'s default), else through
``llm.collective_rpc("refine_take_entropies")``, which needs the worker extension
:class:`EntropyWorkerExtension` (``LLM(worker_extension_cls=WORKER_EXTENSION)``; :func:`make_llm`
sets it) or, as a last resort, ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``. When no record can be
read, and always with ``"prefill"``/``"prompt_logprobs"``, the entropy is
:func:`topk_entropy_estimate` (midpoint of a lower and an upper bound computed from the top-K;
mean error ~0.2 nats for K=16 on SmolLM2).

Engines and transports
----------------------
:class:`VLLMBackend` takes a ``vllm.LLM`` (driven from the calling thread through
:class:`~refine.backends.vllm.llm_transport.LLMTransport`) or an engine transport:
:class:`~refine.backends.vllm.async_transport.AsyncTransport` over an ``AsyncLLM`` (:func:`make_async_engine`) running
on an event loop, whose sessions may run in several threads at once, their requests batched together by vLLM's
scheduler; a deadline and a cancel event bound per thread (``transport.limits(...)``) abort engine requests in the
middle of a call. With an ``AsyncLLM`` the engine core runs in a process of its own, so exact entropies come
through ``collective_rpc("refine_take_entropies")`` (the worker extension, which :func:`make_async_engine` sets).
:class:`~refine.backends.vllm.http.HTTPTransport` reaches an already running ``vllm serve`` (started with
``--logits-processors refine.backends.vllm:ForcedTokensProcessor``) over its OpenAI HTTP API; there the forcing spec
travels in ``vllm_xargs`` in its flat encoding (:func:`flat_force_spec`), and entropies are always the top-K
estimate (the processor's records stay in the server's worker process). Import it from its module (it needs
``httpx``, which vLLM's server brings).

Modules: :mod:`~refine.backends.vllm.processor` (the forcing processor and its spec),
:mod:`~refine.backends.vllm.engine` (engine construction), :mod:`~refine.backends.vllm.transport` (with
:mod:`~refine.backends.vllm.llm_transport` and :mod:`~refine.backends.vllm.async_transport`),
:mod:`~refine.backends.vllm.http` (the transport over HTTP; :mod:`~refine.backends.vllm.wire`, the OpenAI
completions format it speaks, and :mod:`~refine.backends.vllm.upstream`, the deployment's start-up checks),
:mod:`~refine.backends.vllm.session`,
:mod:`~refine.backends.vllm.backend`; the backend-free maths live in
:mod:`refine.backends.logprobs` and :mod:`refine.backends.prefix`.

Counting forward tokens
-----------------------
``forward_tokens`` counts token positions run through the model, like the HF backend: per request
``len(prompt_token_ids) - num_cached_tokens + max(len(generated) - 1, 0)`` -- the prompt positions
not served from the prefix cache, plus every generated token but the last (sampled, never fed back).
``num_cached_tokens`` is read from vLLM's ``RequestOutput`` (missing: 0, i.e. the whole prompt counts).
``forward_calls`` counts engine steps: per ``generate`` call, the largest number of tokens generated by
one of its requests (each step is one batched forward; chunked prefills can add uncounted steps).
``score_cost``/``decode_cost`` assume nothing is cached (``len(prompt) + len(row)`` per scored row, plus
``len(row) - start`` with ``"prefill"`` for a possible re-send; ``len(prompt) + len(tokens) + max_new``
per decode request), so they bound what a call adds from above;
prefix-cache hits make the real count smaller. vLLM caches whole KV blocks only (128 tokens by
default on CPU; :func:`make_llm` sets 32), so prompts shorter than a block never hit the cache.

``max_batch_tokens`` is not used: vLLM batches and schedules by itself (``max_num_batched_tokens``);
every :meth:`VLLMSession.score` and :meth:`VLLMSession.decode` is one engine call (two for
``"prefill"`` when some rows must be re-sent).
"""

from ...about import VLLM_INSTALL
from ...errors import require

vllm = require("vllm", VLLM_INSTALL)
torch = require("torch", "torch==2.13.0")

from ..logprobs import scores_from_logprobs as _scores_from_logprobs  # noqa: E402
from ..logprobs import topk_entropy_estimate  # noqa: E402
from ..prefix import score_start as _start  # noqa: E402
from .backend import METHODS, VLLMBackend, _registered  # noqa: E402
from .engine import (  # noqa: E402
    CPU_KV_CACHE_BYTES,
    WORKER_EXTENSION,
    EntropyWorkerExtension,
    _take_entropies_rpc,
    engine_options,
    make_async_engine,
    make_llm,
)
from .processor import (  # noqa: E402
    EXTRA_KEY,
    FLAT_PREFIX,
    PROCESSOR_FQCN,
    ForcedTokensProcessor,
    flat_force_spec,
    force_spec,
    spec_from_extra_args,
    take_entropies,
)
from .session import VLLMSession  # noqa: E402
from .async_transport import AsyncTransport  # noqa: E402
from .llm_transport import LLMTransport  # noqa: E402
from .transport import CallLimits, EngineCancelled, EngineDeadline, EngineTransport  # noqa: E402

__all__ = [
    "AsyncTransport", "CallLimits", "EngineCancelled", "EngineDeadline", "EngineTransport", "LLMTransport",
    "engine_options", "make_async_engine", "CPU_KV_CACHE_BYTES", "EXTRA_KEY", "METHODS", "PROCESSOR_FQCN", "WORKER_EXTENSION", "EntropyWorkerExtension",
    "FLAT_PREFIX", "flat_force_spec", "spec_from_extra_args",
    "ForcedTokensProcessor", "VLLMBackend", "VLLMSession", "force_spec", "make_llm", "take_entropies",
    "topk_entropy_estimate", "_registered", "_scores_from_logprobs", "_start", "_take_entropies_rpc",
]
