"""Gradient-guided substitution (ARCA, Jones et al. 2023; GCG, Zou et al. 2023, applied to the output).

Let L(y) = sum_t log p(y_t | x, y_<t) and write the input token at position i as a one-hot vector o_i. Replacing
y_i by v changes L by

    Delta(i, v) = [log p(v | x, y_<i) - log p(y_i | x, y_<i)]  +  [sum_{t>i} log p(y_t | ..., v, ...) - same with y_i].

The first bracket is exact and free: the forward pass that gives the gradient gives the distribution at i. The
second bracket (the effect on every later token) is estimated to first order by the gradient with respect to o_i:

    second bracket ~ g_i[v] - g_i[y_i],    g_i = dL/do_i = E dL/de_i  (E: the input embedding matrix).

Each pass makes one forward and one backward pass over the current output, scores every (position, token) pair
by c(T) * (local + estimate) (c(T): the objective's log-probability weight, see
:mod:`refine.strategies.differentiable`), keeps the ``per_position`` best tokens at each position and of those the
``candidates`` best overall, and evaluates them exactly in one batch (as substitutions; with ``regenerate`` also
with the suffix after the edit re-decoded). The best one is accepted through :meth:`Search.accept` if it improves
the objective. With ``combine`` the improving substitutions at different positions are then stacked (best first:
the best two, the best three, ...) and evaluated in one more batch: a pass can take several edits at once.

Guard: a position whose gradient row is not finite, or is all zero while later tokens exist, gets no estimate; its
candidates are the model's top ``top_k`` tokens there, ranked by the local term alone.

A pass ends with :meth:`Search.end_sweep`; the search converges at the first pass that accepts nothing (so
``budget.max_sweeps`` bounds the passes). Each gradient call is checked against the budget first
(:class:`BudgetExhausted` if it cannot be paid). Substitutions keep the length: EOS is never proposed, a final EOS
is never replaced. Needs the transformers backend (:class:`~refine.backends.base.GradientSession`).

Example:
    >>> from refine import RefineConfig
    >>> cfg = RefineConfig(strategy="gradient", strategy_options={"candidates": 32, "regenerate": False})
"""

from __future__ import annotations

import numpy as np

from ..backends.base import TokenGradients
from ..errors import BudgetExhausted
from ..moves import Proposal
from ..search import Search
from ..strategy import STRATEGIES, Strategy
from ..types import Hypothesis
from .differentiable import afford, allowed_mask, editable, gradient_session, ranking_scale
from .options import count, flag


def regenerate_bounds(search: Search, hyp: Hypothesis, i: int) -> tuple[int, int, bool] | None:
    """``(max_new, min_new, force_eos)`` for re-decoding the suffix after an edit at ``i``, by the same length
    policy as the ``regenerate`` move (:class:`refine.moves.Regenerate`); None when nothing follows."""
    ctx = search.move_context
    y = hyp.tokens
    old_suffix = len(y) - i - 1
    if ctx.length == "fixed":
        max_new, min_new, force = old_suffix, old_suffix - (1 if hyp.ended else 0), hyp.ended
    else:
        max_new = min(old_suffix + ctx.regen_extra_tokens, ctx.max_output_tokens - (i + 1))
        min_new, force = 0, hyp.ended and ctx.length == "keep_eos"
    return None if max_new <= 0 else (max_new, max(min_new, 0), force)


@STRATEGIES.register("gradient")
class GradientGuided(Strategy):
    """Gradient-ranked substitutions, evaluated exactly; see the module docstring for the maths.

    Args:
        candidates: (position, token) pairs evaluated per pass.
        per_position: at most this many per position (``None``: ``config.top_k``).
        regenerate: also evaluate each pair with the suffix re-decoded (a ``regenerate`` proposal).
        combine: stack the improving substitutions of a pass and evaluate the stacks too.
    """

    name = "gradient"

    def __init__(self, candidates: int = 32, per_position: int | None = None, regenerate: bool = False,
                 combine: bool = True) -> None:
        self.candidates = count("candidates", candidates)
        self.per_position = None if per_position is None else count("per_position", per_position)
        self.regenerate = flag("regenerate", regenerate)
        self.combine = flag("combine", combine)

    def start(self, search: Search) -> None:
        self.session = gradient_session(search, self.name)

    # ------------------------------------------------------------------ the maths

    def estimates(self, search: Search, hyp: Hypothesis, grads: TokenGradients) -> np.ndarray:
        """``(T, V)`` estimated objective change of each substitution; -inf where none is allowed."""
        y = np.asarray(hyp.tokens)
        T = len(y)
        rows = np.arange(T)
        local = np.where(np.isnan(grads.logprobs), -np.inf, grads.logprobs)
        G = grads.onehot
        delta_local = local - local[rows, y][:, None]
        finite = np.isfinite(G).all(axis=1)
        flat = np.zeros(T, dtype=bool)
        flat[:-1] = np.abs(np.where(np.isfinite(G[:-1]), G[:-1], 0.0)).max(axis=1) == 0.0  # no signal at all
        good = finite & ~flat
        est = delta_local + np.where(good[:, None], G - np.where(good, G[rows, y], 0.0)[:, None], 0.0)
        est = ranking_scale(search.objective, T) * est
        ok = allowed_mask(search, local.shape[1])
        mask = np.zeros_like(est, dtype=bool)
        k = search.config.top_k
        for i in editable(search, hyp):
            mask[i] = ok
            mask[i, y[i]] = False
            if not good[i]:  # fallback: the model's own top-k at i, ranked by the local term alone
                top = [v for v in np.argsort(-local[i], kind="stable") if mask[i, v]][:k]
                mask[i] = False
                mask[i, top] = True
        est = np.where(mask & ~np.isnan(est), est, -np.inf)
        return est

    def pick(self, search: Search, est: np.ndarray) -> list[tuple[int, int, float]]:
        """The ``candidates`` best ``(position, token, estimate)``, at most ``per_position`` per position."""
        per = self.per_position or search.config.top_k
        picks = []
        for i in range(est.shape[0]):
            row = est[i]
            n = min(per, int(np.isfinite(row).sum()))
            if n == 0:
                continue
            top = np.argpartition(-row, n - 1)[:n] if n < len(row) else np.arange(len(row))
            picks += [(i, int(v), float(row[v])) for v in top if np.isfinite(row[v])]
        picks.sort(key=lambda p: (-p[2], p[0], p[1]))
        return picks[: self.candidates]

    def proposals(self, search: Search, hyp: Hypothesis, picks) -> list[Proposal]:
        ctx = search.move_context
        y = hyp.tokens
        out = []
        for i, v, e in picks:
            cand = y[:i] + (v,) + y[i + 1:]
            if ctx.roundtrip_ok(cand):
                out.append(Proposal(self.name, i, cand, prior=e))
            if self.regenerate and ctx.roundtrip_ok(y[:i] + (v,)):
                bounds = regenerate_bounds(search, hyp, i)
                if bounds is not None:
                    max_new, min_new, force = bounds
                    out.append(Proposal(self.name, i, y[:i] + (v,), decode=True, max_new=max_new, min_new=min_new,
                                        force_eos=force, prior=e))
        return out

    def stacks(self, search: Search, hyp: Hypothesis, results) -> list[Proposal]:
        """Improving substitutions at distinct positions applied together: the best two, best three, ..."""
        tol = search.config.tolerance
        best: dict[int, tuple[float, int]] = {}
        for p, h in results:
            if p.decode or h.value <= hyp.value + tol:
                continue
            if p.position not in best or h.value > best[p.position][0]:
                best[p.position] = (h.value, p.tokens[p.position])
        order = sorted(best.items(), key=lambda kv: -kv[1][0])
        y, out = list(hyp.tokens), []
        for n, (i, (_, v)) in enumerate(order):
            y[i] = v
            if n >= 1 and search.move_context.roundtrip_ok(y):
                out.append(Proposal(self.name + "_stack", order[0][0], tuple(y), prior=float(n)))
        return out

    # ------------------------------------------------------------------ the pass

    def step(self, search: Search) -> bool:
        cur = search.current
        afford(search, self.session, len(cur.tokens))
        grads = self.session.token_gradients(cur.tokens)
        props = self.proposals(search, cur, self.pick(search, self.estimates(search, cur, grads)))
        results = search.evaluate(props) if props else []
        exhausted = None
        if self.combine:
            stacked = self.stacks(search, cur, results)
            if stacked:
                try:
                    results = results + search.evaluate(stacked, parent=cur)
                except BudgetExhausted as exc:  # the single edits are scored and paid for: keep the best of them
                    exhausted = exc
        improved = False
        if results:
            prop, best = max(results, key=lambda r: r[1].value)
            improved = search.accept(prop, best)
        if exhausted is not None:
            raise exhausted
        search.end_sweep()
        return improved
