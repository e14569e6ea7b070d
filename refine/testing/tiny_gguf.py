"""A tiny GGUF checkpoint written from scratch, for tests of GGUF loading.

:func:`write_tiny_gguf` writes a random 1-layer Llama (fp32 tensors) with a byte-level BPE tokenizer and
the tokenizer metadata a real file carries, ``tokenizer.ggml.add_bos_token`` / ``add_eos_token``
included. Vocabulary: the 256 byte symbols, then ``<bos>``, ``<|endoftext|>`` (EOS, under the name
transformers' byte-level tokenizer class expects) and ``<pad>``, then two merged tokens. transformers
reads it like any GGUF file; writing it needs the ``gguf`` package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: ids of the special tokens, after the 256 byte symbols
BOS, EOS, PAD = 256, 257, 258
#: the merges (a GGUF byte-level tokenizer needs some), each adding one token after the special ones
MERGES = ("h i", "\u0120 t")


def byte_symbols() -> list[str]:
    """The byte-level alphabet: one printable character per byte (bytes that print stand for themselves,
    the others are moved up past 255), in byte order."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def write_tiny_gguf(path: str | Path, *, add_bos_token: bool | None = True, add_eos_token: bool | None = False,
                    seed: int = 0, hidden: int = 16, layers: int = 1) -> Path:
    """Write the checkpoint to ``path``; ``None`` leaves a flag out of the metadata."""
    from gguf import GGUFWriter, TokenType

    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens = byte_symbols() + ["<bos>", "<|endoftext|>", "<pad>"] + [m.replace(" ", "") for m in MERGES]
    vocab, heads, ffn = len(tokens), 2, 2 * hidden

    w = GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([TokenType.NORMAL] * 256 + [TokenType.CONTROL] * 3 + [TokenType.NORMAL] * len(MERGES))
    w.add_token_merges(list(MERGES))
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_pad_token_id(PAD)
    if add_bos_token is not None:
        w.add_add_bos_token(add_bos_token)
    if add_eos_token is not None:
        w.add_add_eos_token(add_eos_token)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(vocab, hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    w.add_tensor("output.weight", rand(vocab, hidden) * 4)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
