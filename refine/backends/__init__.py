"""Backends compute log-probabilities for the engine. The core never imports them eagerly:
``refine.backends.hf`` needs transformers, ``refine.backends.vllm`` needs vLLM."""

from .base import Backend, DecodeRequest, Decoded, Session, TokenizerView

__all__ = ["Backend", "DecodeRequest", "Decoded", "Session", "TokenizerView"]
