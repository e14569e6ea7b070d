"""Walking along the base: rows that continue a prefix of the call's ``base`` read their next-token distributions
from one forward of ``base`` instead of running the model, until their tokens leave it."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ...errors import require
from ...types import Scores
from ..base import Decoded
from ..prefix import common_prefix

torch = require("torch", "torch==2.13.0")


class BaseWalk:
    """Mixin of :class:`~refine.backends.hf.session.HFSession` (uses its cache, forward and token choice)."""

    #: positions of ``base`` a walk may read (its distributions are held in memory, ``V`` floats each)
    walk_window = 256

    @staticmethod
    def _walkable(requests, base: tuple[int, ...]) -> list[int]:
        """Requests that continue a prefix of ``base``: plain greedy or sampled rows, no fork on either side."""
        parents = {r.fork[0] for r in requests if r.fork is not None}
        return [i for i, r in enumerate(requests)
                if r.beam == 1 and r.fork is None and i not in parents and r.max_new > 0
                and len(r.tokens) <= len(base) and tuple(r.tokens) == base[: len(r.tokens)]]

    def _walk_from(self, requests, base: tuple[int, ...]) -> int | None:
        """The first position of ``base`` whose distribution a walk needs; None: no request walks, because none
        has a token of ``base`` ahead of it to follow (a row at the end of ``base`` alone would only move its
        first decoding step into a call of its own) or the window is closed."""
        idx = [i for i in self._walkable(requests, base) if len(base) - len(requests[i].tokens) < self.walk_window]
        if not any(len(requests[i].tokens) < len(base) for i in idx):
            return None
        return min(len(requests[i].tokens) for i in idx)

    def _base_chain(self, base: tuple[int, ...], first: int) -> list[int]:
        """The context cached before the walk's forward: the prompt and ``base`` up to the token before position
        ``first`` (the forward then feeds that token and the rest of ``base``)."""
        return list(self.prompt + base)[: len(self.prompt) + first - 1]

    def _walk(self, requests, base: tuple[int, ...], lo: int, out: list):
        """Advance every request that continues a prefix of ``base`` along it without running the model
        (``lo``: :meth:`_walk_from`).

        The distribution of the token after ``prompt + base[:i]`` is the same whatever row asks for it, so one
        forward of ``base`` (from the earliest such request on) gives it at every position. A request then
        chooses its tokens from those distributions exactly as decoding would (same rules, same generator, same
        order of draws) while it stays on ``base``; the first token that leaves it (or the first one after the
        end of ``base``) is its last walked token, and the rest is decoded as usual from there. A row that ends
        (EOS or ``max_new``) on the walk is finished without a forward of its own: ``out`` receives it.

        Returns the requests with each walked one replaced by its continuation (walked tokens appended, the
        length rules shifted by as many tokens), and per walked request its ``start`` as plain decoding would
        report it, the scores of its tokens from there to where decoding takes over (read from the same
        distributions), the log-probabilities of its sampled walked tokens and its generator (decoding goes on
        drawing from it). A walk changes no result: tokens, densities, ``start`` and scores are those of plain
        decoding.
        """
        eos_ids = self.backend.tokenizer.eos_ids
        first = max(lo - 1, 0)  # the first position scored: a walked row's `start` is its last forced token's
        self._ensure(self._base_chain(base, first))
        chain = list(self.prompt + base)
        fed = chain[len(self.prompt) + first - 1 :]
        res = self._extend(fed)  # the cache now holds prompt + base
        memo = torch.log_softmax(res.logits[0].float(), -1)  # row j: the token at position first + j

        def scores(toks: list[int], a: int, b: int) -> Scores:
            """Scores of ``toks[a:b]`` (positions on ``base`` or just past it) from the memo."""
            if b <= a:
                return Scores.empty(self.topk)
            return self._target_scores(memo[a - first : b - first], torch.tensor(toks[a:b], device=memo.device))

        requests = list(requests)
        walked: dict[int, tuple[int, Scores, list[float], Any]] = {}
        for i in self._walkable(requests, base):
            r = requests[i]
            t = len(r.tokens)
            if t < lo:
                continue
            s0 = max(t - 1, 0)  # plain decoding's start for this row (`_layout`)
            gen = torch.Generator().manual_seed(int(r.seed)) if r.sampled else None
            toks, lqs = list(r.tokens), []
            while True:
                logp = memo[len(toks) - first]
                if gen is None:
                    x = self._greedy(logp, len(toks) - t, r)
                else:
                    x, lq = self._sample(logp, len(toks) - t, r, gen)
                    lqs.append(lq)
                toks.append(x)
                n_new = len(toks) - t
                if x in eos_ids or n_new >= r.max_new:  # finished on the walk
                    out[i] = (s0, Decoded(tuple(toks), scores(toks, s0, len(toks)), sample_logprobs=None
                                          if gen is None else np.asarray(lqs, dtype=np.float64)))
                    break
                pos = len(toks) - 1
                if pos < len(base) and x == base[pos]:
                    continue  # still on base: the next distribution is known
                requests[i] = dataclasses.replace(r, tokens=tuple(toks), max_new=r.max_new - n_new,
                                                  min_new=max(r.min_new - n_new, 0))
                # decoding reports scores from its own start (the last walked token's position, `_layout`)
                walked[i] = (s0, scores(toks, s0, min(common_prefix(toks, base), len(toks) - 1)), lqs, gen)
                break
        return requests, walked
