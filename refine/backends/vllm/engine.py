"""Starting a vLLM engine for refine: :func:`make_llm` (a ``vllm.LLM``) and :func:`make_async_engine` (an
``AsyncLLM``, for serving), both with the forcing processor registered, the entropy worker extension
(:class:`EntropyWorkerExtension`) and the defaults of :func:`engine_options`, which work on CPU.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Sequence

import torch
import vllm

from .processor import PROCESSOR_FQCN, ForcedTokensProcessor, take_entropies

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


#: KV cache size :func:`make_llm` reserves on CPU (about 23k tokens of SmolLM2-135M in fp32)
CPU_KV_CACHE_BYTES = 1 << 30
#: import path of :class:`EntropyWorkerExtension` for ``LLM(worker_extension_cls=...)``
WORKER_EXTENSION = "refine.backends.vllm.EntropyWorkerExtension"



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


def _model_path(model_path: str | os.PathLike | None) -> str:
    if model_path is None:
        from ...models import default_model_path

        model_path = default_model_path()
    return str(model_path)


def engine_options(kw: dict[str, Any], processor: Any = ForcedTokensProcessor) -> dict[str, Any]:
    """Engine arguments: refine's defaults (see :func:`make_llm`) overridden by ``kw``, with ``processor`` (the
    class, or its import path :data:`PROCESSOR_FQCN`) first among the ``logits_processors``."""
    kw = dict(kw)
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
        opts.update(block_size=32)
        if "gpu_memory_utilization" not in kw and "kv_cache_memory_bytes" not in kw:
            opts.update(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
    extra_lp = list(kw.pop("logits_processors", None) or [])
    opts.update(kw)
    opts["logits_processors"] = [processor] + [
        p for p in extra_lp if p is not ForcedTokensProcessor and p != PROCESSOR_FQCN
    ]
    return opts


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
    ``seed=0``, ``worker_extension_cls=WORKER_EXTENSION``; on CPU also ``block_size=32`` (prefix-cache
    granularity; vLLM's CPU default is 128, which leaves short prompts uncached) and, unless
    ``gpu_memory_utilization`` or ``kv_cache_memory_bytes`` is given, ``kv_cache_memory_bytes=1 GiB``
    (:data:`CPU_KV_CACHE_BYTES`). On CPU ``gpu_memory_utilization`` is the share of *all* RAM the worker
    claims and vLLM refuses to start when that much is not free: its 0.92 default always fails, and 0.5
    fails as soon as another engine runs on the machine; an explicit KV size skips that check.
    """
    model_path = _model_path(model_path)
    opts = engine_options(kw, processor=ForcedTokensProcessor)
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


def make_async_engine(model_path: str | os.PathLike | None = None, **kw: Any) -> Any:
    """Start a ``vllm.v1.engine.async_llm.AsyncLLM`` with :func:`make_llm`'s defaults (:func:`engine_options`)
    and the forcing processor registered by import path (the engine core runs in a process of its own).

    Call it from inside the running event loop that will drive it (e.g. a FastAPI lifespan): the engine's
    output handler is a task on that loop. ``kw``: any engine argument (``AsyncEngineArgs`` field); also
    ``disable_log_stats`` (default True). Shut it down with ``engine.shutdown()``.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    kw = dict(kw)
    kw.pop("multiprocessing", None)  # always separate processes
    kw.pop("threads", None)
    kw.setdefault("disable_log_stats", True)
    opts = engine_options(kw, processor=PROCESSOR_FQCN)
    return AsyncLLM.from_engine_args(AsyncEngineArgs(model=_model_path(model_path), **opts))
