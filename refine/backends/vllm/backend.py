"""The vLLM :class:`~refine.backends.base.Backend`: one engine, its tokenizer, the scoring method and how the
processor's entropy records are read (see :mod:`refine.backends.vllm`)."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from typing import Any, Iterator, Sequence

from ...errors import InputError
from ..base import Backend, TokenizerView
from .engine import _take_entropies_rpc
from .processor import PROCESSOR_FQCN, ForcedTokensProcessor, take_entropies
from .session import VLLMSession
from .llm_transport import LLMTransport
from .transport import EngineTransport

#: scoring methods of :class:`VLLMBackend`
METHODS = ("auto", "force", "prefill", "prompt_logprobs")


def _vllm_config(engine: Any) -> Any:
    """The ``VllmConfig`` of a ``vllm.LLM``, an ``AsyncLLM`` or an :class:`EngineTransport` (None if none)."""
    if isinstance(engine, EngineTransport):
        return engine.vllm_config
    llm_engine = getattr(engine, "llm_engine", None)
    if llm_engine is not None:
        return getattr(llm_engine, "vllm_config", None)
    return getattr(engine, "vllm_config", None)


def _registered(llm: Any) -> bool:
    """Whether the engine (a ``vllm.LLM``, an ``AsyncLLM`` or a transport) was started with
    :class:`ForcedTokensProcessor`."""
    try:
        procs = _vllm_config(llm).model_config.logits_processors or []
    except AttributeError:
        return False
    return any(p is ForcedTokensProcessor or p == PROCESSOR_FQCN
               or (isinstance(p, type) and issubclass(p, ForcedTokensProcessor)) for p in procs)


class VLLMBackend(Backend):
    """A :class:`~refine.backends.base.Backend` on a vLLM engine (see the module docstring).

    Args:
        llm: a ``vllm.LLM`` (start it with :func:`make_llm`, or pass ``logits_processors=[ForcedTokensProcessor]``
            yourself, for exact, prefix-cached scoring), or an
            :class:`~refine.backends.vllm.transport.EngineTransport`: an
            :class:`~refine.backends.vllm.async_transport.AsyncTransport` over an ``AsyncLLM``
            (:func:`~refine.backends.vllm.engine.make_async_engine`) lets refinements in several threads share the
            engine, their requests batched together.
        method: ``"force"`` (teacher forcing through generation; needs the processor; exact entropy),
            ``"prefill"`` (prompt log-probabilities reading the prefix cache; one step per call; estimated
            entropy), ``"prompt_logprobs"`` (the same recomputing every prefill), or ``"auto"``
            (``"force"`` if the processor is registered, else ``"prefill"``). See the module docstring.
        entropy: ``"auto"`` (exact when the processor's records can be read, else estimated),
            ``"exact"`` (raise if they cannot be read), ``"estimate"`` (always
            :func:`topk_entropy_estimate`).

    Example:
        >>> from refine.backends.vllm import make_llm, VLLMBackend    # doctest: +SKIP
        >>> backend = VLLMBackend(make_llm())                           # doctest: +SKIP
        >>> refine.refine("Name three colors.", model=backend)          # doctest: +SKIP
    """

    name = "vllm"

    def __init__(self, llm: Any, *, method: str = "auto", entropy: str = "auto") -> None:
        if method not in METHODS:
            raise InputError(f"`method` has to be one of {METHODS}, but is {method!r}")
        if entropy not in ("auto", "exact", "estimate"):
            raise InputError(f"`entropy` has to be 'auto', 'exact' or 'estimate', but is {entropy!r}")
        from ..hf import tokenizer_view

        self.transport: EngineTransport = llm if isinstance(llm, EngineTransport) else LLMTransport(llm)
        #: the engine object (``vllm.LLM`` or ``AsyncLLM``)
        self.llm = self.transport.engine
        cfg = self.transport.vllm_config
        self.model_config = cfg.model_config
        mode = getattr(self.model_config, "logprobs_mode", "raw_logprobs")
        if mode != "raw_logprobs":
            raise InputError(
                f"the engine returns logprobs_mode={mode!r}; refine needs the model's own log-probabilities: "
                "start it with logprobs_mode='raw_logprobs' (vLLM's default)"
            )
        registered = _registered(self.transport)
        if method == "auto":
            method = "force" if registered else "prefill"
        elif method == "force" and not registered:
            raise InputError(
                "method='force' needs the forcing logits processor: start the engine with "
                "refine.backends.vllm.make_llm(...) or LLM(..., logits_processors=[ForcedTokensProcessor])"
            )
        self.method = method
        self.can_decode = registered
        self.hf_tokenizer = self.transport.get_tokenizer()
        vocab = int(self.model_config.get_vocab_size())
        gen_eos: list[int] = []
        with contextlib.suppress(Exception):
            e = (self.model_config.try_get_generation_config() or {}).get("eos_token_id")
            if e is not None:
                gen_eos = [int(x) for x in (e if isinstance(e, (list, tuple)) else [e])]
        self.tokenizer: TokenizerView = tokenizer_view(self.hf_tokenizer, vocab, gen_eos)
        self.max_length = int(self.model_config.max_model_len)
        self.max_logprobs = int(getattr(self.model_config, "max_logprobs", 20))
        self._entropy_mode = entropy
        self._entropy_via: str | None = None  # "local" | "rpc" | "none", found on first use
        self.id = uuid.uuid4().hex[:8]
        self._counter = itertools.count()

    # -------------------------------------------------------------------- prompts

    def encode_prompt(self, prompt: str, chat: bool | None) -> list[int]:
        from ..hf import prompt_ids

        return prompt_ids(self.hf_tokenizer, prompt, chat)

    def open(self, prompt: Sequence[int], topk: int, max_batch_tokens: int) -> "VLLMSession":
        return VLLMSession(self, prompt, topk, max_batch_tokens)

    # -------------------------------------------------------------------- internals shared by sessions

    @property
    def wants_entropy_records(self) -> bool:
        """Whether forcing requests should ask the processor to record entropies (False once no channel works)."""
        if self._entropy_mode == "estimate":
            return False
        return self._entropy_mode == "exact" or self._entropy_via != "none"

    def next_key(self) -> str:
        return f"{self.id}-{next(self._counter)}"

    @contextlib.contextmanager
    def recording(self, keys: Sequence[str | None]) -> Iterator[None]:
        """Around an engine call whose requests record entropies under ``keys``: if the call fails or is
        cancelled, nothing will collect those records, so they are dropped (:meth:`discard_entropies`)."""
        try:
            yield
        except BaseException:
            self.discard_entropies(keys)
            raise

    def discard_entropies(self, keys: Sequence[str]) -> None:
        """Drop what the processor recorded for ``keys`` of a call that failed or was cancelled (nothing will
        collect them), once a channel to the records is known; never raises."""
        keys = [k for k in keys if k]
        if keys and self._entropy_via not in (None, "none"):
            with contextlib.suppress(Exception):
                self.collect_entropies(keys)

    def collect_entropies(self, keys: Sequence[str]) -> dict[str, dict[int, float]] | None:
        """Entropies recorded by the processor for ``keys``; None when they cannot be read."""
        if self._entropy_mode == "estimate" or not keys:
            return None
        known = self._entropy_via  # a channel that worked once keeps working: an empty answer means only that
        # these keys have no records (a call cut short by a deadline or a cancel), never that the channel is gone
        if known in (None, "local") and self.transport.in_process:
            got = take_entropies(keys)
            if got or known == "local":
                self._entropy_via = "local"
                return got or None
        for via, method in (("rpc", "refine_take_entropies"), ("rpc-callable", _take_entropies_rpc)):
            if known not in (None, via):
                continue
            try:
                parts = self.transport.collective_rpc(method, args=(list(keys),))
            except Exception as exc:  # noqa: BLE001 - any failure means: no such channel
                self._rpc_error = repr(exc)
                continue
            got = {}
            for part in parts:
                for k, pairs in (part or {}).items():
                    got[k] = {int(p): float(h) for p, h in pairs}
            if got or known == via:
                self._entropy_via = via
                return got or None
        self._entropy_via = "none"
        if self._entropy_mode == "exact":
            raise InputError(
                "exact entropies are recorded in the vLLM worker process and cannot be read here: start the "
                "engine with make_llm() (in-process, or with worker_extension_cls=WORKER_EXTENSION), or allow "
                "collective_rpc callables (VLLM_ALLOW_INSECURE_SERIALIZATION=1); or use entropy='estimate'"
            )
        return None
