"""The Hugging Face backend: a causal LM from transformers and its tokenizer, opening one
:class:`~refine.backends.hf.session.HFSession` per prompt."""

from __future__ import annotations

from typing import Any, Sequence

from ...errors import InputError
from ..base import Backend
from .session import HFSession
from .tokens import generation_eos, prompt_ids, tokenizer_view


class HFBackend(Backend):
    """Scores and decodes with a causal LM from transformers.

    Args:
        model: a decoder-only ``PreTrainedModel`` (encoder-decoder models are refused).
        tokenizer: its tokenizer; it must fit the model's vocabulary.

    Example:
        >>> from refine.backends.hf import HFBackend  # doctest: +SKIP
        >>> backend = HFBackend(model, tokenizer)              # doctest: +SKIP
        >>> session = backend.open(prompt_ids, topk=16, max_batch_tokens=2048)  # doctest: +SKIP
    """

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "forward"):
            raise InputError(f"`model` has to be a transformers PreTrainedModel, but is {type(model).__name__}")
        if getattr(config, "is_encoder_decoder", False):
            raise InputError(
                f"{type(model).__name__} is an encoder-decoder model; refine supports decoder-only causal LMs"
            )
        vocab = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None \
            else int(config.vocab_size)
        n_tok = len(tokenizer)
        if n_tok > vocab:
            raise InputError(
                f"the tokenizer has {n_tok} tokens but the model's output layer only {vocab}: "
                "they do not belong together (load both from the same folder)"
            )
        self.model = model
        self.hf_tokenizer = tokenizer
        self.tokenizer = tokenizer_view(tokenizer, vocab, generation_eos(model))
        bad = [i for i in self.tokenizer.eos_ids if i >= vocab]
        if bad:
            raise InputError(f"EOS id(s) {bad} are outside the model's vocabulary of {vocab}: tokenizer mismatch")
        self.max_length = int(
            getattr(config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
        )
        self.device = next(model.parameters()).device

    def encode_prompt(self, prompt: str, chat: bool | None) -> list[int]:
        return prompt_ids(self.hf_tokenizer, prompt, chat)

    def open(self, prompt: Sequence[int], topk: int, max_batch_tokens: int) -> HFSession:
        return HFSession(self, prompt, topk, max_batch_tokens)

