"""What the gradient-guided strategies share: the capability check, the differentiable part of the objective,
the tokens a position may take, and Adam.

The differentiable part. For a fixed output length T every log-probability term of an objective is a constant
multiple of L(y) = log P(y | x) = sum_t log p(y_t | x, y_<t):

    sum: w * L,    mean: (w / T) * L,    gnmt: w / ((5 + T) / 6)^alpha * L,

and the ``length`` term is constant. Substitutions keep T, so on the set a substitution search moves in the
objective is ``c(T) * L(y) + (terms without a gradient)``: repetition, coverage, reference and reward terms are
treated as 0 when *ranking* candidates; every candidate is still evaluated exactly, with all terms, before it is
accepted. With a scorer model the generator's L stands in for the scorer's (a proxy for ranking only, likewise).
"""

from __future__ import annotations


import numpy as np

from ..backends.base import GradientSession
from ..errors import BudgetExhausted, ConfigError
from ..objectives import GNMTLogProb, MeanLogProb, Objective, SumLogProb
from ..search import Search
from ..types import Hypothesis


def gradient_session(search: Search, strategy: str) -> GradientSession:
    """The search's session as a :class:`GradientSession`, or a :class:`ConfigError` naming the backend to use."""
    session = search.session
    if not isinstance(session, GradientSession):
        raise ConfigError(
            f"strategy {strategy!r} needs gradients through the model, which only the transformers (HF) backend "
            f"provides; this search runs on {type(session).__name__}. Use the HF backend, or another strategy "
            "(e.g. 'coordinate')")
    return session


def afford(search: Search, session: GradientSession, n_tokens: int) -> None:
    """Raise :class:`BudgetExhausted` unless the budget can pay one gradient call on ``n_tokens`` tokens."""
    if session.gradient_cost(n_tokens) > search.remaining_tokens():
        raise BudgetExhausted()


def logprob_scale(objective: Objective, n_tokens: int) -> float:
    """c(T): the objective's log-probability terms at length ``n_tokens`` equal c(T) * log P(y | x)."""
    c = 0.0
    for w, term in objective.terms:
        if isinstance(term, MeanLogProb):
            c += w / max(n_tokens, 1)
        elif isinstance(term, GNMTLogProb):
            c += w / ((5.0 + n_tokens) / 6.0) ** term.alpha
        elif isinstance(term, SumLogProb):
            c += w
    return c


def ranking_scale(objective: Objective, n_tokens: int) -> float:
    """c(T) for ranking; 1 when the objective has no log-probability term (L then ranks by fluency alone)."""
    c = logprob_scale(objective, n_tokens)
    return c if c != 0.0 else 1.0


def editable(search: Search, hyp: Hypothesis) -> list[int]:
    """Positions a substitution may change: all but a final EOS."""
    n = len(hyp.tokens)
    return list(range(n - 1 if hyp.ended else n))


def allowed_mask(search: Search, vocab: int) -> np.ndarray:
    """``(V,)`` bool: tokens a substitution may put in (no EOS: it would change the length; no banned specials)."""
    ctx = search.move_context
    ok = np.ones(vocab, dtype=bool)
    for t in set(ctx.banned) | set(ctx.eos_set):
        if 0 <= t < vocab:
            ok[t] = False
    return ok


class Adam:
    """Adam ascent (Kingma & Ba 2015) on one array: with g the gradient of the function to *maximise*,

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,   x <- x + lr * m_hat / (sqrt(v_hat) + eps),

    m_hat, v_hat the bias-corrected moments. Entries at -inf (switched-off columns) stay there: their gradient
    is 0. Non-finite gradient entries are treated as 0.
    """

    def __init__(self, x: np.ndarray, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        self.x = np.array(x, dtype=np.float64)
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m = np.zeros_like(self.x)
        self.v = np.zeros_like(self.x)
        self.t = 0

    def step(self, grad: np.ndarray) -> np.ndarray:
        g = np.where(np.isfinite(grad), grad, 0.0)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        live = np.isfinite(self.x)
        self.x = np.where(live, self.x + self.lr * m_hat / (np.sqrt(v_hat) + self.eps), self.x)
        return self.x
