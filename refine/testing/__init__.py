"""Tiny models and tokenizers built in memory (no download), for tests, examples and benchmarks' smoke runs.

:mod:`refine.testing.tiny_gguf` writes a tiny GGUF file, for tests of GGUF loading.
"""

from .tiny import BigramLM, char_tokenizer, other_char_tokenizer, tiny_llama

__all__ = ["BigramLM", "char_tokenizer", "other_char_tokenizer", "tiny_llama"]
