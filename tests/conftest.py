import importlib.util

import pytest

from refine.testing import BigramLM, char_tokenizer, tiny_llama


@pytest.fixture(scope="session")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="session")
def llama():
    return tiny_llama(seed=0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, llama, tok):
    """The tiny Llama and its tokenizer saved as a model folder (what `--model` takes)."""
    d = tmp_path_factory.mktemp("tiny")
    llama.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def backend(llama, tok):
    from refine.backends.hf import HFBackend

    return HFBackend(llama, tok)


# Bigram model where greedy decoding is wrong (ids follow char_tokenizer: 1 = <eos>, 3 = 'a', ...).
S, A, B, X = 10, 3, 4, 12  # 'h' is the prompt token; 'a' and 'b' the first choice; 'j' after 'b'
GREEDY_WRONG_TABLE = {
    S: {A: 0.6, B: 0.4},
    A: {t: 0.2 for t in range(13, 18)},  # after 'a' the mass is spread: best next token 0.2
    B: {X: 0.9, 13: 0.1},  # after 'b' one token is very likely
    **{t: {1: 0.99, 20: 0.01} for t in range(12, 18)},  # then EOS
}


@pytest.fixture(scope="session")
def bigram_backend(tok):
    from refine.backends.hf import HFBackend

    model = BigramLM(len(tok), GREEDY_WRONG_TABLE, eos_token_id=1)
    return HFBackend(model, tok)


@pytest.fixture(scope="session")
def scorer_dir(tmp_path_factory):
    """A second tiny model with another tokenizer (refine.testing.other_char_tokenizer), saved as a folder."""
    from refine.testing import other_char_tokenizer

    tok2 = other_char_tokenizer()
    d = tmp_path_factory.mktemp("judge")
    tiny_llama(seed=7, vocab_size=len(tok2)).save_pretrained(d)
    tok2.save_pretrained(d)
    return d


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
