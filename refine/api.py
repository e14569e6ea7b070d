"""The one-call API: :func:`refine` (text or ids in, :class:`~refine.types.RefineResult` out)."""

from __future__ import annotations

from typing import Any, MutableMapping, Sequence

from .backends.base import Backend, DecodeRequest
from .config import RefineConfig
from .errors import InputError
from .forbid import forbidden_ids, mask_in
from .scorer import Scorer
from .search import ProgressFn, run_search
from .types import RefineResult

#: how many tokens the greedy answer that :func:`refine` and ``refine run`` start from may have. Room for a
#: short answer of a few paragraphs to end with EOS: an answer cut by the cap is unfinished, and refinement
#: keeps finished answers finished (:meth:`refine.search.Search.admissible`) but cannot finish a cut one
#: unless an edit happens to.
DEFAULT_MAX_NEW_TOKENS = 128


def _as_ids(x: Any, what: str) -> list[int] | None:
    """Token ids from a list/tuple/1-D tensor or array; None for text."""
    if isinstance(x, str):
        return None
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        if x and isinstance(x[0], (list, tuple)):
            if len(x) != 1:
                raise InputError(f"`{what}` must be one sequence, got a batch of {len(x)}; refine them one by one "
                                 "or use refine.integrations.hf.generate")
            x = x[0]
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in x):
            raise InputError(f"`{what}` must be text or a list of integer token ids")
        return list(x)
    raise InputError(f"`{what}` must be text or token ids, but is {type(x).__name__}")


def check_prompt(prompt: str | Sequence[int]) -> None:
    """A prompt refine can condition on: not empty, and as text not only whitespace."""
    if len(prompt) == 0 or (isinstance(prompt, str) and not prompt.strip()):
        raise InputError("the prompt is empty; refine needs a prompt to condition on")


def check_ids(ids: Sequence[int], vocab_size: int, what: str) -> None:
    for pos, t in enumerate(ids):
        if not 0 <= t < vocab_size:
            raise InputError(f"`{what}` has token id {t} at position {pos}, outside the vocabulary [0, {vocab_size})")


def resolve_backend(model: Any = None, tokenizer: Any = None) -> Backend:
    """A :class:`Backend` from a Backend, a transformers model (+ tokenizer), a model name/path, or None (default)."""
    if isinstance(model, Backend):
        return model
    from .backends.hf import HFBackend  # transformers is needed from here on

    if model is None or isinstance(model, str):
        from .models import load_model

        hf_model, hf_tok = load_model(model)
        return HFBackend(hf_model, tokenizer or hf_tok)
    if tokenizer is None:
        raise InputError("pass `tokenizer=` together with a transformers model")
    return HFBackend(model, tokenizer)


def resolve_scorer(config: RefineConfig, loaded: MutableMapping[str, Backend] | None = None) -> RefineConfig:
    """``config`` with its ``scorer`` path loaded as a :class:`Backend` (a Backend or None: ``config`` itself).

    ``loaded``: a path -> backend dict shared by the calls of one batch, so that each path is loaded once.
    """
    if not isinstance(config.scorer, str):
        return config
    if loaded is None:
        loaded = {}
    if config.scorer not in loaded:
        loaded[config.scorer] = resolve_backend(config.scorer)
    return config.replace(scorer=loaded[config.scorer])


def scorer_prompt_ids(scorer: Backend, generator: Backend, prompt_ids: Sequence[int],
                      prompt: str | Sequence[int] | None = None, chat: bool | None = None) -> list[int]:
    """The prompt in the scorer's ids.

    ``prompt``: text goes through the scorer's :meth:`~Backend.encode_prompt` with ``chat`` (its chat template
    where it has one, unless ``chat=False``; its BOS where its tokenizer adds one); ids are taken as they are.
    ``None``: the generator's ``prompt_ids`` decoded to text with special tokens dropped (a chat template's
    markers included), then encoded as plain text by the scorer (``chat=False``: the text already holds the
    conversation).
    """
    if prompt is None:
        return scorer.encode_prompt(generator.tokenizer.decode(list(prompt_ids)), False)
    ids = _as_ids(prompt, "scorer_prompt")
    if ids is None:
        return scorer.encode_prompt(prompt, chat)  # type: ignore[arg-type]
    check_ids(ids, scorer.tokenizer.vocab_size, "scorer_prompt")
    return ids


def generate_greedy(backend: Backend, prompt_ids: Sequence[int], max_new_tokens: int, topk: int = 16,
                    max_batch_tokens: int = 4096, forbid: Any = ()) -> list[int]:
    """Greedy decoding through the backend's own decoder (what refinement starts from by default).

    ``forbid``: a ``RefineConfig.forbid`` rule; the decoder then never writes a token it rules out, so the
    answer refinement starts from already keeps the rule (a backend that cannot mask raises
    :class:`~refine.errors.InputError`, as the search does).
    """
    banned = forbidden_ids(backend.tokenizer, forbid)
    session = backend.open(prompt_ids, topk, max_batch_tokens)
    try:
        mask_in(session, banned)
        ((_, dec),) = session.decode([DecodeRequest((), max_new_tokens)])
    finally:
        session.close()
    return list(dec.tokens)


def max_output_tokens(backend: Backend, prompt_len: int, config: RefineConfig) -> int:
    room = backend.max_length - prompt_len
    return room if config.max_new_tokens is None else min(room, config.max_new_tokens)


def refine_tokens(
    backend: Backend,
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
    config: RefineConfig | dict | None = None,
    progress: ProgressFn | None = None,
    scorer_prompt: str | Sequence[int] | None = None,
    chat: bool | None = None,
) -> RefineResult:
    """Refine ``output_ids`` (a decoded answer to ``prompt_ids``) with ``backend``. The caller's lists are not modified.

    Empty ``output_ids`` start a sampler (``power``, ``power_smc``) from nothing; any other strategy raises
    :class:`~refine.errors.InputError` (:meth:`~refine.search.Search.score_initial`).

    With ``config.scorer`` set, ``scorer_prompt`` and ``chat`` say how the scorer sees the prompt
    (:func:`scorer_prompt_ids`; default: ``prompt_ids`` decoded to text).
    """
    config = resolve_scorer(RefineConfig.from_dict(config))
    prompt_ids, output_ids = list(prompt_ids), list(output_ids)
    vocab = backend.tokenizer.vocab_size
    check_prompt(prompt_ids)
    check_ids(prompt_ids, vocab, "prompt")
    check_ids(output_ids, vocab, "output")
    limit = max_output_tokens(backend, len(prompt_ids), config)
    if limit < 1:
        raise InputError(f"the prompt ({len(prompt_ids)} tokens) fills the context window of {backend.max_length} "
                         "tokens: there is no room for an output")
    if len(output_ids) > limit:
        raise InputError(
            f"prompt ({len(prompt_ids)} tokens) + output ({len(output_ids)} tokens) exceed the room available: "
            f"the output may have at most {limit} tokens (context window {backend.max_length}"
            + (f", max_new_tokens {config.max_new_tokens}" if config.max_new_tokens else "") + ")"
        )
    scorer = None
    if config.scorer is not None:
        ids = scorer_prompt_ids(config.scorer, backend, prompt_ids, scorer_prompt, chat)
        scorer = Scorer(config.scorer, ids, backend.tokenizer, config.max_batch_tokens)
    session = backend.open(prompt_ids, config.topk_store, config.max_batch_tokens)
    try:
        return run_search(session, backend.tokenizer, output_ids, config, limit, progress, scorer)
    finally:
        session.close()
        if scorer is not None:
            scorer.close()


def refine(
    prompt: str | Sequence[int],
    output: str | Sequence[int] | None = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
    config: RefineConfig | dict | None = None,
    chat: bool | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: ProgressFn | None = None,
    **options: Any,
) -> RefineResult:
    """Refine a model's answer to ``prompt``.

    Args:
        prompt: text (a chat template is applied when the tokenizer has one, unless ``chat=False``) or token ids.
        output: the answer to refine, as text (taken as a complete answer: EOS is appended) or token ids.
            ``None``: decode one greedily first (``max_new_tokens`` at most; one that runs into the cap is
            unfinished, see :attr:`RefineResult.initial_ended <refine.types.RefineResult>`), without the
            tokens ``config.forbid`` rules out; refinement then keeps to the same cap unless
            ``config.max_new_tokens`` sets another. ``""`` or ``[]``:
            no start at all, for the samplers only (``strategy="power"`` or ``"power_smc"``): their draws are
            the only candidates, as power sampling is used as a decoder (no greedy decode is paid for); the
            result's ``initial_text`` is empty and its ``initial_score`` ``-inf`` (so is its output, should no
            draw complete within the budget). Outputs then have at most ``config.max_new_tokens`` tokens, or
            ``max_new_tokens`` when the config sets none.
        model: ``None`` (the embedded SmolLM2-135M-Instruct), a local model folder or GGUF file, a transformers
            model (with ``tokenizer``), or a :class:`~refine.backends.base.Backend`.
        scorer (an option): a second model that judges the edits ``model`` proposes (``RefineConfig.scorer``);
            a text prompt reaches it through its own chat template (same ``chat``), ids decoded to text.
        config: a :class:`RefineConfig` or dict of its fields; ``**options`` override single fields.
        progress: called with the :class:`~refine.search.Search` after every step.

    Example:
        >>> import refine                                            # doctest: +SKIP
        >>> r = refine.refine("Name three colors.", objective="mean")  # doctest: +SKIP
        >>> print(r.initial_text, "->", r.text, r.gain)              # doctest: +SKIP
    """
    config = RefineConfig.from_dict(config)
    if options:
        config = config.replace(**options)
    if isinstance(prompt, str):  # ids are checked by refine_tokens
        check_prompt(prompt)
    if isinstance(output, str) and output and not output.strip():
        raise InputError("the output is only whitespace; pass the answer to refine, None to decode one greedily, "
                         "or \"\" to let a sampler (power, power_smc) start from nothing")
    backend = resolve_backend(model, tokenizer)
    prompt_ids = _as_ids(prompt, "prompt")
    if prompt_ids is None:
        prompt_ids = backend.encode_prompt(prompt, chat)
    if output is None:
        output_ids = generate_greedy(backend, prompt_ids, max_new_tokens, config.topk_store, config.max_batch_tokens,
                                     config.forbid)
    elif isinstance(output, str) and not output:
        output_ids = []
    else:
        output_ids = _as_ids(output, "output")
        if output_ids is None:
            output_ids = backend.tokenizer.encode(output) + [backend.tokenizer.eos]
    if (output is None or not output_ids) and config.max_new_tokens is None:
        config = config.replace(max_new_tokens=max_new_tokens)  # the answer decoded here, or a sampler's: one cap
    return refine_tokens(backend, prompt_ids, output_ids, config, progress,
                         scorer_prompt=prompt if isinstance(prompt, str) else None, chat=chat)
