"""Hugging Face ``generate`` integration.

Two ways in:

1. A wrapper: ``refine.integrations.hf.generate(model, input_ids, tokenizer=tok, refine={...}, **generate_kwargs)``
   runs ``model.generate`` and refines every returned sequence.
2. A ``custom_generate`` callable: ``model.generate(input_ids, custom_generate=refine.integrations.hf.custom_generate,
   refine={...}, refine_tokenizer=tok)`` -- generate's own preparation, then the usual decoding mode, then refinement.

Both return the refined sequences as ``prompt + refined output``, right-padded with the pad id, in the
same row order as ``generate`` (``num_return_sequences`` rows per prompt). The wrapper also returns each
row's :class:`~refine.types.RefineResult` (scores, edits, stats).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import InputError, require

torch = require("torch", "torch==2.13.0")
require("transformers", "transformers")

from ..api import refine_tokens, resolve_scorer  # noqa: E402
from ..backends.hf import HFBackend  # noqa: E402
from ..config import RefineConfig  # noqa: E402
from ..forbid import forbidden_ids  # noqa: E402
from ..types import RefineResult  # noqa: E402


@dataclass
class RefineGenerateOutput:
    """What :func:`generate` returns.

    Attributes:
        sequences: ``(B * num_return_sequences, L)`` prompt + refined output, right-padded with ``pad_token_id``.
        initial_sequences: what ``model.generate`` returned (before refinement).
        results: one :class:`RefineResult` per row (initial/refined tokens, scores, edits, stats).
        generate_output: the full ``model.generate`` output (a ``ModelOutput`` if ``return_dict_in_generate``).
    """

    sequences: Any
    initial_sequences: Any
    results: list[RefineResult] = field(default_factory=list)
    generate_output: Any = None

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.results]


def _prompt_rows(n_inputs: int, n_outputs: int, num_return: int) -> list[int]:
    """For each output row, the input row holding its prompt.

    generate() returns ``num_return`` rows per prompt; its inputs may already be expanded to
    ``max(num_beams, num_return)`` identical rows per prompt (inside ``custom_generate``).
    """
    batch = n_outputs // num_return
    if batch == 0 or n_outputs % num_return or n_inputs % batch:
        raise InputError(f"cannot match {n_outputs} generated rows to {n_inputs} prompts "
                         f"(num_return_sequences={num_return})")
    expand = n_inputs // batch
    return [(j // num_return) * expand for j in range(n_outputs)]


def _split_rows(input_ids, attention_mask, sequences, prompt_rows, eos_ids: Sequence[int], pad_id: int | None):
    """Per output row: (prompt ids without left padding, generated ids cut after the first EOS)."""
    in_len = input_ids.shape[1]
    eos = set(eos_ids)
    rows = []
    for j, p in enumerate(prompt_rows):
        prompt = input_ids[p]
        if attention_mask is not None:
            prompt = prompt[attention_mask[p].bool()]
        gen = sequences[j, in_len:].tolist()
        cut = next((k + 1 for k, t in enumerate(gen) if t in eos), None)
        if cut is not None:
            gen = gen[:cut]
        elif pad_id is not None:
            while gen and gen[-1] == pad_id:
                gen.pop()
        rows.append((prompt.tolist(), gen))
    return rows


def _refine_rows(backend, rows, config: RefineConfig, progress) -> list[RefineResult]:
    results = []
    for prompt, gen in rows:
        if not gen:
            raise InputError("generate returned an empty output for a row; there is nothing to refine")
        results.append(refine_tokens(backend, prompt, gen, config, progress))
    return results


def _assemble(input_ids, results: Sequence[RefineResult], prompt_rows, pad_id: int):
    """Left-padded prompts (as given) + refined outputs, right-padded to a common length."""
    in_len = input_ids.shape[1]
    width = max(len(r.tokens) for r in results)
    out = torch.full((len(results), in_len + width), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    for j, r in enumerate(results):
        out[j, :in_len] = input_ids[prompt_rows[j]]
        out[j, in_len : in_len + len(r.tokens)] = torch.tensor(r.tokens, dtype=input_ids.dtype)
    return out


def _config_for(refine: RefineConfig | dict | None, max_new_tokens: int | None) -> RefineConfig:
    """The rows' config: ``max_new_tokens`` from generate's when unset, a ``scorer`` path loaded once for all rows."""
    config = resolve_scorer(RefineConfig.from_dict(refine))
    if config.max_new_tokens is None and max_new_tokens:
        config = config.replace(max_new_tokens=int(max_new_tokens))
    return config


def _output_cap(max_new_tokens: int | None, max_length: int | None, prompt_len: int) -> int | None:
    """The output cap generate decoded under: ``max_new_tokens``, else what ``max_length`` leaves after the
    (padded) prompt; None when neither is set."""
    if max_new_tokens:
        return int(max_new_tokens)
    if max_length:
        return max(int(max_length) - prompt_len, 1)
    return None


def _generation_setting(name: str, model, generate_kwargs: Mapping[str, Any]) -> Any:
    """A generation setting as ``model.generate(**generate_kwargs)`` reads it: the keyword, else the
    ``generation_config`` passed, else the model's."""
    if generate_kwargs.get(name) is not None:
        return generate_kwargs[name]
    gc = generate_kwargs.get("generation_config") or model.generation_config
    return getattr(gc, name, None)


def _pad_id(model, tokenizer, eos: int) -> int:
    for v in (getattr(tokenizer, "pad_token_id", None), getattr(model.generation_config, "pad_token_id", None)):
        if v is not None:
            return int(v)
    return eos


def generate(
    model: Any,
    input_ids: Any = None,
    attention_mask: Any = None,
    *,
    tokenizer: Any,
    refine: RefineConfig | dict | None = None,
    progress: Callable | None = None,
    **generate_kwargs: Any,
) -> RefineGenerateOutput:
    """Run ``model.generate`` and refine every returned sequence.

    Args:
        model: a decoder-only transformers model.
        input_ids, attention_mask: as for ``model.generate`` (left-padded batches).
        tokenizer: the model's tokenizer.
        refine: :class:`RefineConfig` or dict. ``max_new_tokens`` defaults to generate's. With ``"scorer"`` (a
            path or a Backend) a second model judges the edits; it sees each prompt as the prompt ids decoded to
            text (:func:`refine.api.scorer_prompt_ids`). With ``"forbid"`` the forbidden tokens are added to
            generate's ``suppress_tokens``, so the answers refined are decoded without them too.
        **generate_kwargs: passed to ``model.generate`` (``num_beams``, ``do_sample``, ``num_return_sequences``...).

    Example:
        >>> out = generate(model, **tok(["Hi!"], return_tensors="pt"), tokenizer=tok,   # doctest: +SKIP
        ...                refine={"objective": "mean"}, max_new_tokens=32)
        >>> out.texts[0], out.results[0].gain                                           # doctest: +SKIP
    """
    backend = HFBackend(model, tokenizer)  # refuses encoder-decoder models and mismatched tokenizers
    if input_ids is None:
        raise InputError("`input_ids` is required")
    if attention_mask is None and input_ids.shape[0] > 1:
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is not None and bool((input_ids[:, 0] == pad).any()):
            raise InputError("a left-padded batch needs its `attention_mask` (pass what the tokenizer returned)")
    def setting(name: str) -> Any:
        return _generation_setting(name, model, generate_kwargs)

    max_new = _output_cap(setting("max_new_tokens"), setting("max_length"), int(input_ids.shape[1]))
    config = _config_for(refine, max_new)
    banned = forbidden_ids(backend.tokenizer, config.forbid)
    if banned:  # the answers refinement starts from are decoded without the forbidden tokens too
        generate_kwargs["suppress_tokens"] = sorted(banned | set(generate_kwargs.get("suppress_tokens") or ()))
    gen_out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
    sequences = gen_out if isinstance(gen_out, torch.Tensor) else gen_out.sequences
    num_return = int(setting("num_return_sequences") or 1)
    pad_id = _pad_id(model, tokenizer, backend.tokenizer.eos)
    prompt_rows = _prompt_rows(input_ids.shape[0], sequences.shape[0], num_return)
    rows = _split_rows(input_ids, attention_mask, sequences, prompt_rows, backend.tokenizer.eos_ids, pad_id)
    results = _refine_rows(backend, rows, config, progress)
    refined = _assemble(input_ids, results, prompt_rows, pad_id)
    return RefineGenerateOutput(refined, sequences, results, gen_out)


def custom_generate(
    model: Any,
    input_ids: Any,
    logits_processor: Any = None,
    stopping_criteria: Any = None,
    generation_config: Any = None,
    synced_gpus: bool = False,
    streamer: Any = None,
    refine: RefineConfig | dict | None = None,
    refine_tokenizer: Any = None,
    **model_kwargs: Any,
):
    """A ``custom_generate`` callable for ``model.generate``.

    ``model.generate(input_ids, custom_generate=custom_generate, refine={...}, refine_tokenizer=tok, ...)``
    decodes with the generation mode the other arguments select (greedy, sampling, beam search), then refines
    each row. Returns a tensor of ``prompt + refined output`` rows; with ``return_dict_in_generate=True`` a
    :class:`RefineGenerateOutput` (with per-row results) instead. ``refine_tokenizer`` defaults to the tokenizer
    saved beside the model (``model.name_or_path``).
    """
    from transformers.generation.utils import GENERATION_MODES_MAPPING

    tokenizer = refine_tokenizer
    if tokenizer is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        except Exception as exc:
            raise InputError("pass `refine_tokenizer=` to generate(): no tokenizer is saved beside the model") from exc
    backend = HFBackend(model, tokenizer)
    mode = generation_config.get_generation_mode()
    method = GENERATION_MODES_MAPPING[mode]
    if "/" in method:
        raise InputError(f"generation mode {mode.name} is not supported with refinement")
    attention_mask = model_kwargs.get("attention_mask")
    return_dict = bool(generation_config.return_dict_in_generate)
    config = _config_for(refine, _output_cap(generation_config.max_new_tokens, generation_config.max_length,
                                             int(input_ids.shape[1])))
    banned = forbidden_ids(backend.tokenizer, config.forbid)
    if banned:  # the answers refinement starts from are decoded without the forbidden tokens too
        from transformers.generation.logits_process import LogitsProcessorList, SuppressTokensLogitsProcessor

        logits_processor = LogitsProcessorList([*(logits_processor or []),
                                                SuppressTokensLogitsProcessor(sorted(banned), input_ids.device)])
    gen_out = getattr(type(model), method)(
        model, input_ids, logits_processor=logits_processor, stopping_criteria=stopping_criteria,
        generation_config=generation_config, synced_gpus=synced_gpus, streamer=streamer, **model_kwargs,
    )
    sequences = gen_out if isinstance(gen_out, torch.Tensor) else gen_out.sequences
    pad_id = _pad_id(model, tokenizer, backend.tokenizer.eos)
    num_return = int(generation_config.num_return_sequences or 1)
    prompt_rows = _prompt_rows(input_ids.shape[0], sequences.shape[0], num_return)
    rows = _split_rows(input_ids, attention_mask, sequences, prompt_rows, backend.tokenizer.eos_ids, pad_id)
    results = _refine_rows(backend, rows, config, None)
    refined = _assemble(input_ids, results, prompt_rows, pad_id)
    if return_dict:
        return RefineGenerateOutput(refined, sequences, results, gen_out)
    return refined
