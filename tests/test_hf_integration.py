"""refine.integrations.hf: the generate wrapper and the custom_generate callable."""

import pytest
import torch

from refine.api import refine_tokens
from refine.backends.hf import HFBackend
from refine.errors import InputError
from refine.integrations.hf import custom_generate, generate

CFG = {"objective": "sum", "budget": {"max_sweeps": 1}}


def test_batch_rows_equal_single_refinements(llama, tok):
    enc = tok(["the cat", "a dog sat"], return_tensors="pt", padding=True)
    assert enc["attention_mask"][0, 0] == 0  # left-padded
    out = generate(llama, **enc, tokenizer=tok, refine=CFG, max_new_tokens=10, do_sample=False)
    backend = HFBackend(llama, tok)
    for j, text in enumerate(["the cat", "a dog sat"]):
        ids = tok(text)["input_ids"]
        single = llama.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0, len(ids):].tolist()
        if 1 in single:
            single = single[: single.index(1) + 1]
        ref = refine_tokens(backend, ids, single, {**CFG, "max_new_tokens": 10})
        assert out.results[j].initial_tokens == single
        assert out.results[j].tokens == ref.tokens
        row = out.sequences[j, enc["input_ids"].shape[1]:].tolist()
        assert row[: len(ref.tokens)] == ref.tokens and all(t == tok.pad_token_id for t in row[len(ref.tokens):])
        assert out.results[j].score >= out.results[j].initial_score


def test_num_return_sequences_and_sampling(llama, tok):
    enc = tok(["the cat"], return_tensors="pt")
    torch.manual_seed(0)
    out = generate(llama, **enc, tokenizer=tok, refine=CFG, max_new_tokens=8, do_sample=True,
                   num_return_sequences=3)
    assert out.sequences.shape[0] == 3 and len(out.results) == 3
    for j, r in enumerate(out.results):
        gen = out.initial_sequences[j, enc["input_ids"].shape[1]:].tolist()
        assert gen[: len(r.initial_tokens)] == r.initial_tokens
        assert r.score >= r.initial_score
        assert len(r.tokens) <= 8


def test_custom_generate_matches_wrapper(llama, tok):
    enc = tok(["the cat", "a dog sat"], return_tensors="pt", padding=True)
    wrapped = generate(llama, **enc, tokenizer=tok, refine=CFG, max_new_tokens=10, do_sample=False)
    seqs = llama.generate(**enc, custom_generate=custom_generate, refine=CFG, refine_tokenizer=tok,
                          max_new_tokens=10, do_sample=False)
    assert torch.equal(seqs, wrapped.sequences)


def test_hub_folder_matches_callable(llama, tok):
    """The Hub-layout folder (loaded from a local path, as transformers loads community methods)."""
    import refine.hub

    enc = tok(["the cat", "a dog sat"], return_tensors="pt", padding=True)
    seqs = llama.generate(**enc, custom_generate=custom_generate, refine=CFG, refine_tokenizer=tok,
                          max_new_tokens=10, num_beams=2)
    folder = llama.generate(**enc, custom_generate=str(refine.hub.FOLDER), trust_remote_code=True, refine=CFG,
                            refine_tokenizer=tok, max_new_tokens=10, num_beams=2)
    assert torch.equal(folder, seqs)
    with pytest.raises(ValueError, match="trust_remote_code"):  # transformers' own opt-in for folder code
        llama.generate(**enc, custom_generate=str(refine.hub.FOLDER), refine=CFG, refine_tokenizer=tok,
                       max_new_tokens=10)


def test_custom_generate_with_beams_returns_results(llama, tok):
    enc = tok(["the cat"], return_tensors="pt")
    out = llama.generate(**enc, custom_generate=custom_generate, refine=CFG, refine_tokenizer=tok,
                         max_new_tokens=8, num_beams=3, num_return_sequences=2, return_dict_in_generate=True)
    assert out.sequences.shape[0] == 2 and len(out.results) == 2
    beams = llama.generate(**enc, max_new_tokens=8, num_beams=3, num_return_sequences=2)
    assert torch.equal(out.initial_sequences, beams)


def test_unpadded_batch_without_mask_refused(llama, tok):
    enc = tok(["the cat", "a dog sat"], return_tensors="pt", padding=True)
    with pytest.raises(InputError, match="attention_mask"):
        generate(llama, enc["input_ids"], tokenizer=tok, refine=CFG, max_new_tokens=4)


LONGER = {"objective": {"mean": 1.0, "length": 0.5}, "budget": {"max_sweeps": 2}}  # rewards every extra token


@pytest.mark.parametrize("how", ["keyword", "generation_config", "max_length"])
def test_the_output_cap_is_generates_however_it_is_given(llama, tok, how):
    from transformers import GenerationConfig

    enc = tok(["the cat"], return_tensors="pt")
    n = enc["input_ids"].shape[1]
    kwargs = {"keyword": {"max_new_tokens": 6},
              "generation_config": {"generation_config": GenerationConfig(max_new_tokens=6, do_sample=False)},
              "max_length": {"max_length": n + 6}}[how]
    out = generate(llama, **enc, tokenizer=tok, refine=LONGER, do_sample=False, **kwargs)
    assert all(len(r.tokens) <= 6 for r in out.results)
    free = generate(llama, **enc, tokenizer=tok, refine={**LONGER, "max_new_tokens": 20}, do_sample=False,
                    **kwargs)
    assert any(len(r.tokens) > 6 for r in free.results)  # the cap above is what held the length


def test_num_return_sequences_from_a_generation_config(llama, tok):
    from transformers import GenerationConfig

    enc = tok(["the cat"], return_tensors="pt")
    torch.manual_seed(0)
    config = GenerationConfig(max_new_tokens=6, do_sample=True, num_return_sequences=2)
    out = generate(llama, **enc, tokenizer=tok, refine=CFG, generation_config=config)
    assert out.sequences.shape[0] == 2 and len(out.results) == 2


def test_custom_generate_keeps_to_max_length(llama, tok):
    enc = tok(["the cat"], return_tensors="pt")
    n = enc["input_ids"].shape[1]
    seqs = llama.generate(**enc, custom_generate=custom_generate, refine=LONGER, refine_tokenizer=tok,
                          max_length=n + 6, do_sample=False)
    assert seqs.shape[1] <= n + 6
