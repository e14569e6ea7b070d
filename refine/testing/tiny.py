"""In-memory test models.

- :func:`char_tokenizer`: a character-level fast tokenizer over a small alphabet.
- :func:`other_char_tokenizer`: another character-level tokenizer with different ids, specials in another order
  and a BOS that prompts get (what a second model with its own tokenizer looks like).
- :func:`tiny_llama`: a randomly initialised 2-layer Llama built from a config.
- :class:`BigramLM`: a causal LM whose next-token distribution depends only on the current token, given as
  an explicit table, so tests can state exact probabilities (and build cases where greedy decoding is wrong).
"""

from __future__ import annotations

import string
from typing import Mapping

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

SPECIALS = ["<pad>", "<eos>", "<bos>"]
ALPHABET = list(string.ascii_lowercase + " .,!?")


def char_tokenizer():
    """A character-level tokenizer: ids 0-2 are ``<pad> <eos> <bos>``, then a-z, space and ``.,!?``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    vocab = {tok: i for i, tok in enumerate(SPECIALS + ALPHABET)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", padding_side="left"
    )
    return tok


OTHER_SPECIALS = ["<s>", "</s>", "<unk>", "<pad>"]
OTHER_ALPHABET = ALPHABET[::-1] + list("0123456789")


def other_char_tokenizer():
    """A character-level tokenizer unlike :func:`char_tokenizer`: ids 0-3 are ``<s> </s> <unk> <pad>``, then the
    alphabet reversed and the digits; ``encode`` with special tokens puts ``<s>`` (BOS) first.

    >>> tok = other_char_tokenizer()
    >>> tok("ab").input_ids, tok.eos_token_id
    ([0, 34, 33], 1)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(OTHER_SPECIALS + OTHER_ALPHABET)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left")


def tiny_llama(seed: int = 0, vocab_size: int = len(SPECIALS) + len(ALPHABET), layers: int = 2) -> LlamaForCausalLM:
    """A random 2-layer Llama (fp32, eval mode) whose vocabulary matches :func:`char_tokenizer`."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    # sharpen the random logits so greedy paths are well separated
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model


class BigramConfig(PretrainedConfig):
    model_type = "refine_bigram"

    def __init__(self, vocab_size: int = 8, max_position_embeddings: int = 64, **kw) -> None:
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.num_hidden_layers = 1
        super().__init__(**kw)


class BigramLM(PreTrainedModel):
    """p(next | current) from an explicit table: ``table[current][next] = probability``.

    Rows not given are uniform. It keeps a (dummy) KV cache so cache handling is exercised.

    >>> m = BigramLM(4, {0: {1: 0.5, 2: 0.5}})
    >>> round(float(m(torch.tensor([[0]])).logits.softmax(-1)[0, 0, 1]), 3)
    0.5
    """

    config_class = BigramConfig
    _supports_cache_class = True

    def __init__(self, vocab_size: int, table: Mapping[int, Mapping[int, float]], eos_token_id: int = 1) -> None:
        super().__init__(BigramConfig(vocab_size=vocab_size, eos_token_id=eos_token_id))
        probs = torch.full((vocab_size, vocab_size), 1.0 / vocab_size)
        for cur, row in table.items():
            p = torch.full((vocab_size,), 1e-6)
            for nxt, pr in row.items():
                p[nxt] = pr
            probs[cur] = p / p.sum()
        self.logit_table = torch.nn.Parameter(probs.log(), requires_grad=False)
        self.head = torch.nn.Linear(1, vocab_size, bias=False)  # only so get_output_embeddings() has a shape

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, position_ids=None,
                use_cache=True, logits_to_keep=0, **kwargs):
        B, T = input_ids.shape
        if past_key_values is not None:
            z = torch.zeros(B, 1, T, 1)
            past_key_values.update(z, z, 0)
        logits = self.logit_table[input_ids]  # (B, T, V)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=logits, past_key_values=past_key_values)
