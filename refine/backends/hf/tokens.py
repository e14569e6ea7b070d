"""Hugging Face tokenizers as refine sees them: the :class:`~refine.backends.base.TokenizerView`, and prompt ids
through the chat template."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ...errors import InputError
from ..base import TokenizerView


def tokenizer_view(tokenizer: Any, vocab_size: int, extra_eos: Sequence[int] = ()) -> TokenizerView:
    """Describe an HF tokenizer as a :class:`TokenizerView` for a model with ``vocab_size`` output rows."""
    eos: list[int] = []
    for t in [tokenizer.eos_token_id, *extra_eos]:
        for tid in t if isinstance(t, (list, tuple)) else [t]:
            if tid is not None and int(tid) not in eos:
                eos.append(int(tid))
    if not eos:
        raise InputError("the tokenizer defines no EOS token (`tokenizer.eos_token_id` is None); set one")
    specials = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    def token_str(i: int) -> str:
        return tokenizer.decode([int(i)], skip_special_tokens=False)

    return TokenizerView(vocab_size, tuple(eos), specials, decode, encode, token_str)


def conversation_ids(tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                     **template_kwargs: Any) -> list[int]:
    """Token ids of a chat conversation through the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None) and template_kwargs.get("chat_template") is None:
        raise InputError("the tokenizer has no chat template; pass `chat_template=` or use a plain prompt")
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=True,
                                        **template_kwargs)
    if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def prompt_ids(tokenizer: Any, prompt: str, chat: bool | None) -> list[int]:
    """Token ids of a user prompt: through the chat template when ``chat`` is true, or None and one exists."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat or (chat is None and has_template):
        if not has_template:
            raise InputError("`chat=True` but the tokenizer has no chat template")
        return conversation_ids(tokenizer, [{"role": "user", "content": prompt}])
    return [int(i) for i in tokenizer.encode(prompt, add_special_tokens=True)]


def generation_eos(model: Any) -> list[int]:
    """EOS ids the model's ``generation_config`` adds to the tokenizer's (``[]`` when it names none)."""
    gc = getattr(model, "generation_config", None)
    e = getattr(gc, "eos_token_id", None) if gc is not None else None
    if e is None:
        return []
    return [int(x) for x in (e if isinstance(e, (list, tuple)) else [e])]
