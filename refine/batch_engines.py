"""The engines behind ``refine batch``: each turns a chunk of prompts into refined results, one at a time.

- :func:`hf_refiner`: the Hugging Face backend. Each prompt's initial answer is decoded by the
  backend's own greedy decoder, exactly as ``refine run`` does, so a record does not depend on
  which other prompts shared its chunk (a resumed run writes what an uninterrupted one would).
- :func:`vllm_refiner`: a ``vllm.LLM``. The chunk's initial answers are one ``llm.generate`` call,
  which vLLM schedules as one continuous batch; then each prompt is refined on a
  :class:`~refine.backends.vllm.VLLMBackend`.

A ``scorer`` path in the options is loaded once for the whole batch, and sees each prompt's text through its
own chat template (as ``refine run --scorer`` does).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

from .batch import BatchItem
from .config import RefineConfig, merge_options
from .errors import ConfigError, InputError

Refiner = Callable[[list[BatchItem]], Iterator[tuple[BatchItem, dict[str, Any]]]]


def item_config(base: Mapping[str, Any], item: BatchItem, max_new_tokens: int) -> RefineConfig:
    """The item's config: ``base`` options, then the item's own (which may not change the output cap)."""
    if "max_new_tokens" in item.options:
        raise InputError(f"id {item.id!r}: \"max_new_tokens\" is set for the whole batch (--max-new-tokens), "
                         "not per prompt")
    try:
        return RefineConfig.from_dict({**merge_options(base, item.options), "max_new_tokens": max_new_tokens})
    except ConfigError as exc:
        raise ConfigError(f"id {item.id!r}: {exc}") from exc


def hf_refiner(backend, base: Mapping[str, Any], max_new_tokens: int, chat: bool | None = None) -> Refiner:
    """Refine on an :class:`~refine.backends.hf.HFBackend` (or any backend), prompt by prompt."""
    from .api import generate_greedy, refine_tokens, resolve_scorer

    loaded: dict[str, Any] = {}  # scorer path -> backend, for the whole batch

    def run(items: list[BatchItem]) -> Iterator[tuple[BatchItem, dict[str, Any]]]:
        for item in items:
            config = resolve_scorer(item_config(base, item, max_new_tokens), loaded)
            prompt = backend.encode_prompt(item.prompt, chat)
            output = generate_greedy(backend, prompt, max_new_tokens, config.topk_store, config.max_batch_tokens,
                                     config.forbid)
            yield item, refine_tokens(backend, prompt, output, config, scorer_prompt=item.prompt,
                                      chat=chat).to_dict()

    return run


def vllm_refiner(llm, backend, base: Mapping[str, Any], max_new_tokens: int, chat: bool | None = None) -> Refiner:
    """Initial answers of a chunk in one ``llm.generate`` call, then each refined on ``backend``."""
    from vllm import SamplingParams

    from .api import generate_greedy, refine_tokens, resolve_scorer

    loaded: dict[str, Any] = {}  # scorer path -> backend, for the whole batch

    def run(items: list[BatchItem]) -> Iterator[tuple[BatchItem, dict[str, Any]]]:
        configs = [item_config(base, item, max_new_tokens) for item in items]  # errors before decoding
        configs = [resolve_scorer(c, loaded) for c in configs]
        prompts = [backend.encode_prompt(item.prompt, chat) for item in items]
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens,
                                stop_token_ids=list(backend.tokenizer.eos_ids), detokenize=False)
        # items with a ``forbid`` rule start from the backend's masked greedy decode; the rest share one call
        plain = [i for i, c in enumerate(configs) if not c.forbid]
        outs = llm.generate([{"prompt_token_ids": prompts[i]} for i in plain], params, use_tqdm=False) if plain else []
        decoded = {i: list(o.outputs[0].token_ids) for i, o in zip(plain, outs)}
        for i, (item, config, prompt) in enumerate(zip(items, configs, prompts)):
            output = decoded[i] if i in decoded else generate_greedy(
                backend, prompt, max_new_tokens, config.topk_store, config.max_batch_tokens, config.forbid)
            yield item, refine_tokens(backend, prompt, output, config, scorer_prompt=item.prompt,
                                      chat=chat).to_dict()

    return run
