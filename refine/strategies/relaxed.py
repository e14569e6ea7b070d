"""Continuous relaxation of the output (a soft token at each position), optimised by Adam, then projected.

At position t the output holds a distribution w_t = softmax(theta_t) over K tokens: the current y_t and the
model's ``width - 1`` most likely other tokens there (from the scores of the current output; EOS and banned
specials left out, a final EOS held fixed). The model is fed the mixed embeddings e_t = sum_k w_tk E[c_tk] and the
relaxed objective is the expected log-probability

    J(theta) = sum_t sum_k w_tk log p(c_tk | x, e_<t),

which equals log P(y | x) when every w_t is one-hot. theta_t starts at ``init`` for y_t and 0 for the others (the
current output is where the relaxation starts) and takes ``steps`` Adam steps (learning rate ``lr``) up
sign(c(T)) * J, c(T) the objective's log-probability weight (:mod:`refine.strategies.differentiable`), each from
one forward and one backward pass of the model (:meth:`GradientSession.relaxed_objective`).

Projection: the argmax of theta at every position after each Adam step; the path from the current output to the
final argmax (the positions whose argmax moved, applied one at a time, the largest margin theta_new - theta_old
first: Adam moves every coordinate by about ``lr`` per step, so the full projection often changes many positions
at once and the path keeps the confident part of it); and ``samples`` outputs drawn from the final w (seeded by
``RefineConfig.seed``). The distinct ones that differ from the current output are evaluated
exactly in one batch, and the best is accepted through :meth:`Search.accept` only if the exact discrete objective
improves. One round (Adam steps, projection, evaluation) is a sweep (:meth:`Search.end_sweep`); the search converges
at the first round that accepts nothing. Each gradient call is checked against the budget first: when it cannot be
paid, the projections so far are evaluated, or :class:`BudgetExhausted` if there are none. Needs the transformers
backend (:class:`~refine.backends.base.GradientSession`).

Example:
    >>> from refine import RefineConfig
    >>> cfg = RefineConfig(strategy="relaxed", strategy_options={"steps": 5, "lr": 0.5})
"""

from __future__ import annotations

import numpy as np

from ..errors import BudgetExhausted, DeadlineReached
from ..moves import Proposal
from ..backends.prefix import common_prefix
from ..search import Search
from ..strategy import STRATEGIES, Strategy
from ..types import Hypothesis
from .differentiable import Adam, allowed_mask, editable, gradient_session, ranking_scale
from .options import count, number


@STRATEGIES.register("relaxed")
class Relaxed(Strategy):
    """Adam on a soft output, projected to tokens and evaluated exactly; see the module docstring.

    Args:
        width: tokens per position in the relaxation (the current one and ``width - 1`` alternatives).
        steps: Adam steps per round (one forward and one backward pass each).
        lr: Adam's learning rate on the logits theta.
        init: initial logit of the current token (the others start at 0).
        samples: extra projections drawn from the final soft distribution.
    """

    name = "relaxed"

    def __init__(self, width: int = 4, steps: int = 5, lr: float = 0.5, init: float = 2.0, samples: int = 4) -> None:
        self.width = count("width", width, low=2)
        self.steps = count("steps", steps)
        self.lr = number("lr", lr, 0.0)
        self.init = number("init", init, -1e9)
        self.samples = count("samples", samples, low=0)

    def start(self, search: Search) -> None:
        self.session = gradient_session(search, self.name)

    def relaxation(self, search: Search, hyp: Hypothesis) -> tuple[np.ndarray, np.ndarray]:
        """``(candidates (T, K), initial logits (T, K))``; switched-off columns have logit -inf."""
        y = hyp.tokens
        T, K = len(y), self.width
        cands = np.tile(np.asarray(y, dtype=np.int64)[:, None], (1, K))
        theta = np.full((T, K), -np.inf)
        theta[:, 0] = self.init
        ok = allowed_mask(search, search.tokenizer.vocab_size)
        for i in editable(search, hyp):
            alts = [int(v) for v, lp in zip(hyp.scores.topk_ids[i], hyp.scores.topk_logprobs[i])
                    if v != y[i] and 0 <= v < len(ok) and ok[v] and np.isfinite(lp)][: K - 1]
            cands[i, 1 : 1 + len(alts)] = alts
            theta[i, 1 : 1 + len(alts)] = 0.0
        return cands, theta

    def projections(self, search: Search, hyp: Hypothesis) -> list[tuple[int, ...]]:
        """Argmax projections after each Adam step, the path to the last one, then ``samples`` draws from the final
        weights."""
        cands, theta = self.relaxation(search, hyp)
        rows = np.arange(len(cands))
        sign = 1.0 if ranking_scale(search.objective, len(hyp.tokens)) > 0 else -1.0
        adam = Adam(theta, self.lr)
        out: list[tuple[int, ...]] = []
        for _ in range(self.steps):
            if search.out_of_time():  # projections so far are still evaluated (the search stops after this step)
                if out:
                    break
                raise DeadlineReached()
            if self.session.gradient_cost(len(hyp.tokens)) > search.remaining_tokens():
                if out:
                    break
                raise BudgetExhausted()
            _, grad = self.session.relaxed_objective(cands, adam.x)
            x = adam.step(sign * grad)
            out.append(tuple(int(t) for t in cands[rows, np.argmax(x, axis=1)]))
        if out:  # the path from the current output to the final projection, most confident flips first
            x = adam.x
            flips = [int(t) for t in np.flatnonzero(np.argmax(x, axis=1) != 0)]
            flips.sort(key=lambda t: -(x[t].max() - x[t, 0]))
            y = list(hyp.tokens)
            for t in flips[:-1]:
                y[t] = int(cands[t, np.argmax(x[t])])
                out.append(tuple(y))
        if self.samples and out:
            z = adam.x - adam.x.max(axis=1, keepdims=True)
            w = np.exp(z)
            w /= w.sum(axis=1, keepdims=True)
            for _ in range(self.samples):
                u = search.rng.random(len(w))[:, None]
                pick = np.minimum((np.cumsum(w, axis=1) < u).sum(axis=1), w.shape[1] - 1)
                out.append(tuple(int(t) for t in cands[rows, pick]))
        return out

    def step(self, search: Search) -> bool:
        cur = search.current
        seen, props = {cur.tokens}, []
        for n, toks in enumerate(self.projections(search, cur)):
            if toks in seen or not search.move_context.roundtrip_ok(toks):
                continue
            seen.add(toks)
            props.append(Proposal(self.name, common_prefix(cur.tokens, toks), toks, prior=-float(n)))
        improved = False
        if props:
            results = search.evaluate(props)
            if results:
                improved = search.accept(*max(results, key=lambda r: r[1].value))
        search.end_sweep()
        return improved
