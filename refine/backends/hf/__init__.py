"""Hugging Face transformers backend: batched, KV-cached scoring and re-decoding (greedy, beam or sampled).

- :mod:`~refine.backends.hf.backend`: :class:`HFBackend`, a causal LM and its tokenizer;
- :mod:`~refine.backends.hf.session`: :class:`HFSession`, one prompt's KV cache, scoring and decoding calls;
- :mod:`~refine.backends.hf.tokens`: the tokenizer view and prompt ids (chat template).

Needs transformers (a core dependency of refine) and torch.
"""

from .backend import HFBackend
from .session import HFSession
from .tokens import conversation_ids, prompt_ids, tokenizer_view

__all__ = ["HFBackend", "HFSession", "conversation_ids", "prompt_ids", "tokenizer_view"]
