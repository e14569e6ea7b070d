"""vLLM integration: refine the outputs of ``vllm.LLM.generate`` per request.

A request asks for refinement through its ``SamplingParams.extra_args``:

- ``{"refine": {...}}``: a dict of :class:`~refine.config.RefineConfig` options (``{}`` or ``True``:
  the defaults), e.g. ``{"refine": {"objective": "mean", "top_k": 3, "budget": {"max_sweeps": 2}}}``;
- flat ``refine_<option>`` keys, which is what the OpenAI-compatible server's ``vllm_xargs`` can carry
  (flat values only): ``refine_objective="mean"``, ``refine_top_k=3``, ``refine_moves="substitute"``
  (comma-separated), and ``refine_budget_<field>`` for budget fields (``refine_budget_max_sweeps=2``).
  Flat keys override the nested dict.

Requests without these keys pass through untouched: :func:`generate` returns the very objects
``llm.generate`` returned. For a refined request a *copy* of its ``RequestOutput`` is returned, whose
``outputs[i]`` are copies of the ``CompletionOutput`` s with

- ``text`` / ``token_ids``: the refined output (``token_ids`` ends with EOS when the output ended);
- ``refine``: the :class:`~refine.types.RefineResult` (initial and refined tokens, scores, edits, stats);
- ``original``: the unrefined ``CompletionOutput``;
- ``finish_reason``: ``"stop"`` if the refined output ends with EOS, else ``"length"`` (kept when unchanged);
  ``cumulative_logprob`` / ``logprobs`` are set to None when the tokens changed (they described the old ones);

and the copied ``RequestOutput`` has ``original`` (the unrefined ``RequestOutput``) too.

:func:`chat` (and :meth:`RefineLLM.chat`) does the same for conversations, through the model's chat template.
:class:`RefineLLM`'s other generating methods (``enqueue``, ``beam_search``) cannot refine: they raise
:class:`~refine.errors.ConfigError` when refine options would otherwise be dropped.

Unless the options set ``max_new_tokens``, a refined output is kept within the request's ``max_tokens``.
Bad options raise :class:`~refine.errors.ConfigError` (naming the option) before anything is generated, and so
does a refined request with ``stop`` or ``stop_token_ids`` (refinement re-decodes up to EOS only, so a refined
output would not end where they say).

A second model as scorer (``"scorer"``: a path, loaded once per :func:`generate` call, or a
:class:`~refine.backends.base.Backend` such as an ``HFBackend``) judges the edits the engine proposes; it sees
each prompt as the prompt ids decoded to text (:func:`refine.api.scorer_prompt_ids`). A request checked against
:class:`~refine.limits.RequestLimits` (the server) may not name one.

Refinement runs on the same engine: start it with :func:`refine.backends.vllm.make_llm` (or pass
``logits_processors=[ForcedTokensProcessor]``) so that scoring reuses the prefix cache and the
``regenerate`` move can decode.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Collection, Mapping, Sequence

from ..backends.vllm import VLLMBackend, make_llm
from ..config import Budget, RefineConfig, merge_options
from ..errors import ConfigError, InputError
from ..limits import RequestLimits
from ..types import RefineResult

#: nested options key in ``SamplingParams.extra_args``
REFINE_KEY = "refine"
#: prefix of flat option keys in ``SamplingParams.extra_args``
FLAT_PREFIX = "refine_"

_BUDGET_FIELDS = {f.name for f in dataclasses.fields(Budget)}


def refine_options(params: Any) -> dict[str, Any] | None:
    """The refine options a request carries in ``SamplingParams.extra_args``, or None (no refinement).

    >>> from vllm import SamplingParams                                                  # doctest: +SKIP
    >>> refine_options(SamplingParams(extra_args={"refine_top_k": 3, "refine_budget_max_sweeps": 1}))  # doctest: +SKIP
    {'top_k': 3, 'budget': {'max_sweeps': 1}}
    """
    extra = getattr(params, "extra_args", None)
    if not extra:
        return None
    opts: dict[str, Any] | None = None
    if REFINE_KEY in extra:
        nested = extra[REFINE_KEY]
        if nested is None or nested is False:
            opts = None
        elif nested is True:
            opts = {}
        elif isinstance(nested, Mapping):
            opts = dict(nested)
            if isinstance(opts.get("budget"), Mapping):
                opts["budget"] = dict(opts["budget"])
        else:
            raise ConfigError(
                f"`extra_args[{REFINE_KEY!r}]` has to be a dict of refine options (or True), but is {nested!r}"
            )
    flat = {k[len(FLAT_PREFIX):]: v for k, v in extra.items() if isinstance(k, str) and k.startswith(FLAT_PREFIX)}
    if flat and REFINE_KEY in extra and opts is None:
        raise ConfigError(f"`extra_args[{REFINE_KEY!r}]` turns refinement off, but the request also sets "
                          f"{sorted(FLAT_PREFIX + k for k in flat)}: drop one or the other")
    if flat:
        opts = dict(opts or {})
        for name, value in flat.items():
            sub = name[len("budget_"):] if name.startswith("budget_") else None
            if sub in _BUDGET_FIELDS:
                budget = opts.get("budget")
                if isinstance(budget, Budget):
                    budget = dataclasses.asdict(budget)
                if budget is not None and not isinstance(budget, Mapping):
                    raise ConfigError(f"`budget` has to be a dict of budget limits, but is {budget!r}")
                budget = dict(budget or {})
                budget[sub] = value
                opts["budget"] = budget
            else:
                opts[name] = value
    return opts


def request_config(
    params: Any,
    *,
    defaults: Mapping[str, Any] | None = None,
    plugins: Collection[str] | None = None,
    limits: RequestLimits | None = None,
) -> RefineConfig | None:
    """The validated :class:`RefineConfig` of a request (None: no refinement). Raises ``ConfigError``.

    Args:
        params: the request's ``SamplingParams``; its refine options (:func:`refine_options`) override ``defaults``.
        defaults: options applied to every request (then every request is refined).
        plugins: import paths the options may name (``RefineConfig.from_dict``); None: any (trusted callers).
        limits: caps to check the options against (:meth:`RequestLimits.check_refine`); None: no caps. Options
            neither the request nor ``defaults`` set come from :meth:`RequestLimits.base_options`.
    """
    own = refine_options(params)
    if own is None and defaults is None:
        return None
    for name in ("stop", "stop_token_ids"):
        if getattr(params, name, None):  # refinement re-decodes the answer with no stop rule but EOS
            raise ConfigError(f"`{name}` cannot be combined with refinement: a refined answer is re-decoded up to "
                              f"EOS and would not end at {name.replace('_', ' ')}; send the request without "
                              f"`{name}`, or without refine options")
    base = None if limits is None else limits.base_options()
    config = RefineConfig.from_dict(merge_options(merge_options(base, defaults), own), plugins=plugins)
    max_tokens = getattr(params, "max_tokens", None)
    if config.max_new_tokens is None and max_tokens:
        config = config.replace(max_new_tokens=int(max_tokens))
    return config if limits is None else limits.check_refine(config)


def refined_completion(c: Any, result: RefineResult, eos_ids: Sequence[int]) -> Any:
    """A copy of the ``CompletionOutput`` ``c`` carrying ``result`` (see the module docstring)."""
    new = copy.copy(c)
    new.text = result.text
    new.token_ids = list(result.tokens)
    if list(result.tokens) != list(c.token_ids):
        new.cumulative_logprob = None
        new.logprobs = None
        new.stop_reason = None
        new.finish_reason = "stop" if result.tokens and result.tokens[-1] in eos_ids else "length"
    new.refine = result
    new.original = c
    return new


def generate(
    llm: Any,
    prompts: Any,
    sampling_params: Any = None,
    *,
    refine_backend: VLLMBackend | None = None,
    defaults: Mapping[str, Any] | None = None,
    plugins: Collection[str] | None = None,
    limits: RequestLimits | None = None,
    progress: Callable | None = None,
    **generate_kwargs: Any,
) -> list[Any]:
    """``llm.generate(prompts, sampling_params, **generate_kwargs)``, then refine the requests that ask for it.

    Args:
        llm: a ``vllm.LLM`` (best started with :func:`refine.backends.vllm.make_llm`).
        prompts, sampling_params: as for ``llm.generate`` (one ``SamplingParams`` for all or one per prompt).
        refine_backend: the :class:`VLLMBackend` to refine with; default ``VLLMBackend(llm)``.
        defaults, plugins, limits: how each request's options become a config (:func:`request_config`).
        progress: passed to :func:`refine.api.refine_tokens` for each refined output.

    Returns:
        ``llm.generate``'s list, with refined requests replaced by refined copies (see the module docstring).

    Example:
        >>> from vllm import SamplingParams                                       # doctest: +SKIP
        >>> llm = make_llm()                                                     # doctest: +SKIP
        >>> sp = SamplingParams(temperature=0, max_tokens=48, extra_args={"refine": {"objective": "mean"}})
        >>> out = generate(llm, ["Name three colors."], sp)                      # doctest: +SKIP
        >>> out[0].outputs[0].text, out[0].outputs[0].refine.gain                # doctest: +SKIP
    """
    from ..api import refine_tokens, resolve_scorer

    n_prompts = 1 if isinstance(prompts, (str, dict)) else len(prompts)
    if sampling_params is None:
        per = [llm.get_default_sampling_params()] * n_prompts
    elif isinstance(sampling_params, (list, tuple)):
        if len(sampling_params) != n_prompts:
            raise ValueError(f"{len(sampling_params)} sampling_params for {n_prompts} prompts")
        per = list(sampling_params)
    else:
        per = [sampling_params] * n_prompts
    configs = [request_config(p, defaults=defaults, plugins=plugins, limits=limits)
               for p in per]  # ConfigError here, before generating anything
    loaded: dict[str, Any] = {}  # a scorer path named by several requests is loaded once
    configs = [None if c is None else resolve_scorer(c, loaded) for c in configs]
    backend = None
    if any(c is not None and c.forbid for c in configs):
        backend = refine_backend if refine_backend is not None else VLLMBackend(llm)
        sampling_params = [_denying(p, c, backend) for p, c in zip(per, configs)]
    outputs = llm.generate(prompts, sampling_params, **generate_kwargs)
    if not any(c is not None for c in configs):
        return outputs
    if backend is None:
        backend = refine_backend if refine_backend is not None else VLLMBackend(llm)
    eos_ids = backend.tokenizer.eos_ids
    result = list(outputs)
    for i, (out, config) in enumerate(zip(outputs, configs)):
        if config is None:
            continue
        prompt_ids = list(out.prompt_token_ids or [])
        completions = []
        for c in out.outputs:
            if not c.token_ids:  # nothing to refine: keep as is
                completions.append(c)
                continue
            res = refine_tokens(backend, prompt_ids, list(c.token_ids), config, progress)
            completions.append(refined_completion(c, res, eos_ids))
        new = copy.copy(out)
        new.outputs = completions
        new.original = out
        result[i] = new
    return result


def _denying(params: Any, config: RefineConfig | None, backend: VLLMBackend) -> Any:
    """``params``, or for a config with ``forbid`` a copy whose requests never emit a forbidden token (refine's
    forcing processor masks the ``deny`` list of its spec at every step), so the answers refined start out
    keeping the rule, as ``refine.refine`` decodes its own start."""
    from ..backends.vllm.processor import EXTRA_KEY, FLAT_PREFIX, force_spec
    from ..forbid import forbidden_ids

    if config is None or not config.forbid:
        return params
    extra = dict(getattr(params, "extra_args", None) or {})
    if EXTRA_KEY in extra or any(str(k).startswith(FLAT_PREFIX) for k in extra):
        raise InputError(f"a request with `forbid` cannot also carry a forcing spec (extra_args[{EXTRA_KEY!r}])")
    extra[EXTRA_KEY] = force_spec((), deny=sorted(forbidden_ids(backend.tokenizer, config.forbid)))
    params = params.clone()
    params.extra_args = extra
    return params


def chat(
    llm: Any,
    messages: Any,
    sampling_params: Any = None,
    *,
    add_generation_prompt: bool = True,
    chat_template: str | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    **generate_kwargs: Any,
) -> list[Any]:
    """``llm.chat`` with refinement: one conversation (a list of ``{"role", "content"}`` messages) or a list of
    them, each turned into prompt ids by the model's chat template (with ``tools``, as ``LLM.chat`` passes them
    to it), then :func:`generate` on those ids.

    ``generate_kwargs`` go to :func:`generate` (``refine_backend``, ``defaults``, ``plugins``, ``limits``,
    ``use_tqdm``, ...).

    Example:
        >>> sp = SamplingParams(temperature=0, max_tokens=48, extra_args={"refine": {"objective": "mean"}})
        >>> chat(llm, [{"role": "user", "content": "Name three colors."}], sp)[0].outputs[0].refine  # doctest: +SKIP
    """
    from ..backends.hf import conversation_ids

    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("`messages` must be a conversation (a list of messages) or a list of conversations")
    conversations = [messages] if isinstance(messages[0], Mapping) else list(messages)
    tokenizer = llm.get_tokenizer()
    template = {} if chat_template is None else {"chat_template": chat_template}
    if tools is not None:
        template["tools"] = list(tools)
    prompts = [{"prompt_token_ids": conversation_ids(tokenizer, conv, add_generation_prompt, **template,
                                                     **(chat_template_kwargs or {}))}
               for conv in conversations]
    return generate(llm, prompts, sampling_params, **generate_kwargs)


def prepare_defaults(refine: Mapping[str, Any] | None, limits: RequestLimits | None = None) -> dict[str, Any] | None:
    """Default refine options checked before an engine starts (:class:`ConfigError` naming the option; over a cap
    of ``limits``: :class:`~refine.limits.LimitError`), with a ``"scorer"`` path loaded, once."""
    if refine is None:
        return None
    defaults = dict(refine)
    base = None if limits is None else limits.base_options()
    config = RefineConfig.from_dict(merge_options(base, defaults))
    if limits is not None:
        limits.check_refine(config if config.max_new_tokens else config.replace(max_new_tokens=1))
    if isinstance(config.scorer, str):
        from ..api import resolve_scorer

        defaults["scorer"] = resolve_scorer(config).scorer
    return defaults


class RefineLLM:
    """A ``vllm.LLM`` whose :meth:`generate` refines the requests that ask for it.

    Args:
        llm: an engine; ``None``: :func:`make_llm` ``(model, **make_llm_kwargs)``.
        model: model folder for :func:`make_llm` (``None``: refine's default model).
        refine: default refine options applied to *every* request (a request's own options override them);
            ``None``: only requests with ``extra_args`` refine options are refined. A ``"scorer"`` path is loaded
            here, once.
        plugins: import paths that requests' options may name; ``None``: any (requests written by trusted code).
            A service that takes requests from clients passes the list it trusts (usually empty).
        limits: caps every request's refine options must respect (:class:`~refine.limits.RequestLimits`).
        backend: the :class:`VLLMBackend`; default ``VLLMBackend(llm)``.

    Other attributes are those of the wrapped ``LLM``.

    Example:
        >>> rllm = RefineLLM()                                                        # doctest: +SKIP
        >>> sp = SamplingParams(temperature=0, max_tokens=48, extra_args={"refine_objective": "mean"})
        >>> rllm.generate(["Name three colors."], sp)[0].outputs[0].refine.edits      # doctest: +SKIP
    """

    def __init__(
        self,
        llm: Any = None,
        *,
        model: Any = None,
        refine: Mapping[str, Any] | None = None,
        plugins: Collection[str] | None = None,
        limits: RequestLimits | None = None,
        backend: VLLMBackend | None = None,
        **make_llm_kwargs: Any,
    ) -> None:
        self.defaults = prepare_defaults(refine, limits)
        self.plugins = None if plugins is None else frozenset(plugins)
        self.limits = limits
        self.llm = llm if llm is not None else make_llm(model, **make_llm_kwargs)
        self.backend = backend if backend is not None else VLLMBackend(self.llm)

    def generate(self, prompts: Any, sampling_params: Any = None, **kwargs: Any) -> list[Any]:
        return generate(self.llm, prompts, sampling_params, refine_backend=self.backend, defaults=self.defaults,
                        plugins=self.plugins, limits=self.limits, **kwargs)

    def chat(self, messages: Any, sampling_params: Any = None, **kwargs: Any) -> list[Any]:
        """``LLM.chat`` with refinement (see :func:`chat`): equal to :meth:`generate` on the chat-templated ids."""
        return chat(self.llm, messages, sampling_params, refine_backend=self.backend, defaults=self.defaults,
                    plugins=self.plugins, limits=self.limits, **kwargs)

    def _refuse_refinement(self, method: str, sampling_params: Any) -> None:
        """Methods that cannot refine raise instead of dropping refine options."""
        per = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params]
        asked = [p for p in per if p is not None and refine_options(p) is not None]
        if self.defaults is not None or asked:
            why = "this RefineLLM refines every request" if self.defaults is not None else "refine options were given"
            raise ConfigError(f"`{method}` does not refine, but {why}; use generate() or chat(), or call "
                              f"`.llm.{method}(...)` for the engine's own, unrefined method")

    def enqueue(self, prompts: Any, sampling_params: Any = None, **kwargs: Any) -> Any:
        """``LLM.enqueue`` (unrefined); refuses refine options."""
        self._refuse_refinement("enqueue", sampling_params)
        return self.llm.enqueue(prompts, sampling_params, **kwargs)

    def beam_search(self, prompts: Any, params: Any, **kwargs: Any) -> Any:
        """``LLM.beam_search`` (unrefined); refused when this wrapper refines every request."""
        self._refuse_refinement("beam_search", None)
        return self.llm.beam_search(prompts, params, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "llm":  # not set yet (failed __init__)
            raise AttributeError(name)
        return getattr(self.llm, name)
