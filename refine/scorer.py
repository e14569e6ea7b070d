"""A second model as scorer: proposals come from the generator, fluency is judged by another model.

With ``RefineConfig.scorer`` set, the search still proposes edits from the generator (its top-k tokens,
margins and greedy re-decodings), but every objective term is computed on the *scorer's* view of a
candidate: the candidate's text, decoded from the generator's ids with special tokens dropped, is
re-tokenized with the scorer's own tokenizer and scored by the scorer model in one batched forward per
evaluation. Typical uses:

- a small, fast generator whose edits are judged by a stronger model (the edits are cheap to propose; only
  the scoring pays for the big model, in batches);
- a strong generator whose edits are checked by a different (often smaller) model: an edit is kept only
  when a model that did not write the answer prefers it, which guards against the generator's
  self-preference.

Conventions (one place for each):

- *the scorer's tokens of a candidate*: ``scorer_tokenizer.encode(generator_tokenizer.decode(tokens))``
  (no special tokens), followed by the scorer's first EOS id when the candidate ended with the generator's
  EOS. Token-level terms (``mean``, ``sum``, ``gnmt``, ``length``, ``repetition``, ``reference_ce``) then
  count and read the scorer's tokens, not the generator's.
- *the scorer's prompt* is built by the caller (:func:`refine.api.refine_tokens`): the prompt text through
  the scorer's own :meth:`~refine.backends.base.Backend.encode_prompt` (its chat template where it has one,
  its BOS where its tokenizer adds one), or ids given by the caller. The prompt and the output are tokenized
  separately, as for the generator.
- *a candidate the scorer cannot score* (its text is empty and it did not end, or prompt + candidate overflow
  the scorer's context) gets the log-probabilities ``[-inf]``: a log-probability term makes its value
  ``-inf``, and the engine never accepts it.

The scorer's memo is keyed by the scorer's tokens: two generator sequences with the same text (and the same
ended flag) are scored once. The scorer's forward tokens are counted by its own session and added to the
search's budget and statistics by :class:`refine.search.Search`.

Example:
    >>> scorer = Scorer(judge_backend, judge_prompt_ids, generator.tokenizer)    # doctest: +SKIP
    >>> rows = [scorer.tokens(c, ended=True) for c in candidates]                # doctest: +SKIP
    >>> scorer.cost(rows) <= budget_left                                         # doctest: +SKIP
    >>> logprobs = scorer.logprobs(rows)          # one batched forward           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .backends.base import Backend, Session, TokenizerView
from .errors import InputError

#: what a candidate the scorer cannot score gets as its log-probabilities
UNSCORABLE = np.array([-np.inf])


class Scorer:
    """The scorer model's session for one prompt, its memo of scored candidates and its compute counters.

    Args:
        backend: the scorer model.
        prompt: the prompt in the scorer's token ids (non-empty).
        source: the generator's tokenizer view (decodes candidates to text).
        max_batch_tokens: token positions per forward call of the scorer.
    """

    def __init__(self, backend: Backend, prompt: Sequence[int], source: TokenizerView,
                 max_batch_tokens: int = 4096) -> None:
        if len(prompt) == 0:
            raise InputError("the scorer's prompt is empty (the prompt text tokenizes to nothing with the scorer's "
                             "tokenizer, which adds no BOS): pass the scorer's prompt ids yourself")
        self.backend = backend
        self.tokenizer: TokenizerView = backend.tokenizer
        self.source = source
        self.prompt = tuple(int(t) for t in prompt)
        #: most output tokens a candidate may have in the scorer's context
        self.room = backend.max_length - len(self.prompt)
        if self.room <= 0:
            raise InputError(f"the scorer's prompt ({len(self.prompt)} tokens) fills the scorer's context window "
                             f"({backend.max_length}); shorten the prompt")
        self.session: Session = backend.open(self.prompt, 1, max_batch_tokens)
        self._memo: dict[tuple[int, ...], np.ndarray] = {}
        #: the scorer's tokens of each generator candidate seen (re-tokenizing is asked for again and again: the
        #: parent for every batch, the candidates while the budget check trims a batch)
        self._rows: dict[tuple[tuple[int, ...], bool], tuple[int, ...]] = {}
        #: scorable rows answered without a forward of their own (from the memo, or repeated within a call)
        self.reused = 0

    @property
    def forward_tokens(self) -> int:
        return self.session.forward_tokens

    @property
    def forward_calls(self) -> int:
        return self.session.forward_calls

    def tokens(self, generator_tokens: Sequence[int], ended: bool) -> tuple[int, ...]:
        """The scorer's token ids of a generator candidate (see the module docstring)."""
        key = (tuple(generator_tokens), ended)
        if key not in self._rows:
            ids = list(self.tokenizer.encode(self.source.decode(list(generator_tokens))))
            if ended:
                ids.append(self.tokenizer.eos)
            self._rows[key] = tuple(int(t) for t in ids)
        return self._rows[key]

    def scorable(self, row: tuple[int, ...]) -> bool:
        return 0 < len(row) <= self.room

    def _fresh(self, rows: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """The rows a :meth:`logprobs` call would send to the model: scorable, not in the memo, each once."""
        out, seen = [], set()
        for row in rows:
            if row not in seen and row not in self._memo and self.scorable(row):
                seen.add(row)
                out.append(row)
        return out

    def _base(self, base: tuple[int, ...]) -> tuple[int, ...]:
        # the session returns scores from a shared prefix with `base` on; the rest comes from base's memo entry
        return base if base in self._memo else ()

    def cost(self, rows: Sequence[tuple[int, ...]], base: tuple[int, ...] = ()) -> int:
        """Upper bound on the forward tokens :meth:`logprobs` would spend now on ``rows``."""
        fresh = self._fresh(rows)
        return self.session.score_cost(fresh, self._base(base)) if fresh else 0

    def logprobs(self, rows: Sequence[tuple[int, ...]], base: tuple[int, ...] = ()) -> list[np.ndarray]:
        """Per row, the ``(T,)`` log-probabilities of the scorer's tokens given the scorer's prompt.

        Rows not in the memo are scored in one batched call (the session splits it into chunks of
        ``max_batch_tokens``). ``base``: rows derived from it (usually the parent's scorer tokens) reuse its
        cached prefix.
        """
        fresh = self._fresh(rows)
        self.reused += sum(1 for r in rows if self.scorable(r)) - len(fresh)
        if fresh:
            b = self._base(base)
            for row, (start, sc) in zip(fresh, self.session.score(fresh, b)):
                self._memo[row] = sc.logprobs if start == 0 else np.concatenate([self._memo[b][:start], sc.logprobs])
        return [self._memo.get(r, UNSCORABLE) for r in rows]

    def close(self) -> None:
        self.session.close()
