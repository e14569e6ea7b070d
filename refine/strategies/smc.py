"""Power sampling by sequential Monte Carlo: particles grown block by block, weighted and resampled.

The target is the same as :mod:`refine.strategies.power`'s with ``target="logp"``: pi(y) ∝ p(y|x)^alpha over
outputs that end (EOS) within the length cap or reach it. Instead of a Metropolis–Hastings chain, ``particles``
partial outputs grow together, ``ceil(max_new_tokens / blocks)`` tokens at a time:

1. every particle that can still grow is extended to the block's length limit L_k by a draw from the proposal
   q (each token from p^(1/temperature), renormalised; temperature 1/alpha by default), all particles in one
   batched decode; a particle that ended stays as it is;
2. its weight is multiplied by the incremental weight of the new tokens s after its prefix u,

       w(s | u) = p(s | x, u)^alpha / q(s | u)

   (at temperature 1/alpha each token contributes sum_v p(v)^alpha, the normaliser of its step: a look-ahead
   that favours prefixes whose continuations the model is sure of). The intermediate targets are
   pi_k(y) ∝ p(y|x)^alpha over outputs of at most L_k tokens (ended, or cut at L_k), and the weighted particles
   after the last block target pi itself;
3. when the effective sample size ``1 / sum W_i^2`` of the normalised weights is at most ``ess * particles``
   (and another block follows), the particles are resampled (systematic resampling) and their weights reset.

Each block is one batched decode of at most ``particles`` rows, so the output costs ``blocks`` evaluations of
one block's length each: fewer sequential decoding steps than the MH chain, whose proposals re-decode
everything after their cut. The estimate of the normalising constant, ``log_evidence`` in the extras,
is unbiased in Z (not in log Z) and exact in the limit of many particles; the weighted particles are a
consistent estimate of pi as the particles (or independent runs, weighted by their evidence) grow.
A proposal the engine refuses (an empty output, below ``min_tokens``) is outside the target's support: its
weight is 0.

``tilt`` t > 0 multiplies the target by exp(t * objective(y)): pi(y) ∝ p(y|x)^alpha * exp(t * objective(y)), for
an objective with a ``reward`` (or coverage) term a reward-tilted power distribution. The incremental weight
gains t * (objective(u + s) - objective(u)) (the empty output counts 0), so the intermediate targets score each
partial output by the objective of that partial output: a look-ahead that is exact for terms a prefix already
decides (a forbidden word, a comma where none is allowed) and neutral for those it cannot (a required ending
scores the same on every unfinished particle). Whatever the intermediate scores, the final weights target pi.

What it returns: ``output="best"`` (default) the best output by the refine objective among the start and
every complete particle (ended, or at the full length cap), bound like every strategy by
:meth:`~refine.search.Search.admissible` (an empty start, :attr:`from_nothing`, leaves the particles as the
only candidates); ``output="sample"`` one final particle drawn by its weight.
``extras["particles"]`` lists the final particles with their normalised weights. Stochastic:
``RefineConfig.seed`` fixes every draw.

Example:
    >>> from refine import RefineConfig
    >>> cfg = RefineConfig(strategy="power_smc", max_new_tokens=32, seed=1,
    ...                    strategy_options={"alpha": 4.0, "blocks": 4, "particles": 16})
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..moves import Proposal
from ..search import Search
from ..strategy import STRATEGIES, Strategy
from ..types import Hypothesis
from .complete import keep_best_complete
from .options import choice, count, number, rate

OUTPUTS = ("best", "sample")


@dataclass(frozen=True)
class Particle:
    """One particle: its output so far (``None`` before the first block) and its log weight."""

    hyp: Hypothesis | None
    logw: float


def normalised(logw: np.ndarray) -> np.ndarray:
    """Weights ``exp(logw)`` scaled to sum to 1 (all zeros when none is finite)."""
    finite = np.isfinite(logw)
    if not finite.any():
        return np.zeros(len(logw))
    w = np.where(finite, np.exp(logw - logw[finite].max()), 0.0)
    return w / w.sum()


def systematic_resample(weights: np.ndarray, u: float) -> np.ndarray:
    """Indices of ``len(weights)`` particles drawn by systematic resampling with the uniform ``u`` in [0, 1):
    particle i is copied ``floor`` or ``ceil`` of ``n * W_i`` times, and ``E[copies of i] = n * W_i``."""
    n = len(weights)
    c = np.cumsum(weights / weights.sum())
    c[-1] = 1.0  # no index past the end from rounding
    return np.searchsorted(c, (u + np.arange(n)) / n, side="right")


@STRATEGIES.register("power_smc")
class PowerSMC(Strategy):
    """Sequential Monte Carlo power sampling; see the module docstring for the maths and the options' meaning.

    Args:
        alpha: the power (> 0).
        particles: particles grown side by side (the rows of each block's batch).
        blocks: blocks the output grows by.
        temperature: proposal temperature; ``None``: 1/alpha.
        ess: resample when the effective sample size is at most this share of ``particles`` (0: never,
            1: after every block but the last).
        output: ``"best"`` (best by objective) or ``"sample"`` (a final particle drawn by weight).
        tilt: weight t of exp(t * objective) in the target (>= 0; 0: plain p^alpha).
    """

    from_nothing = True

    def __init__(self, alpha: float = 4.0, particles: int = 16, blocks: int = 4, temperature: float | None = None,
                 ess: float = 0.5, output: str = "best", tilt: float = 0.0) -> None:
        self.alpha = number("alpha", alpha, 0.0)
        self.particles = count("particles", particles)
        self.blocks = count("blocks", blocks)
        self.temperature = 1.0 / self.alpha if temperature is None else number("temperature", temperature, 0.0)
        self.ess = rate("ess", ess)
        self.output = choice("output", output, OUTPUTS)
        self.tilt = number("tilt", tilt, 0.0, low_ok=True)

    def start(self, search: Search) -> None:
        self._cap = search.max_output_tokens
        self._block_len = math.ceil(self._cap / self.blocks)
        self._block = 0
        self.state = [Particle(None, 0.0) for _ in range(self.particles)]
        self.log_evidence = 0.0
        self.resampled = 0

    def increment(self, prev: Hypothesis | None, h: Hypothesis) -> float:
        """log w(s | u) of the tokens ``h`` added after ``prev`` (its prefix; ``None``: the empty output)."""
        prefix_len = 0 if prev is None else len(prev.tokens)
        new_logp = float(np.sum(h.scores.logprobs[prefix_len:]))
        assert h.sampled is not None and len(h.sampled) == len(h.tokens) - prefix_len
        inc = self.alpha * new_logp - float(np.sum(h.sampled))
        if self.tilt:
            inc += self.tilt * (h.value - (0.0 if prev is None else prev.value))
        return inc

    def _grows(self, part: Particle, limit: int, eos: frozenset[int]) -> bool:
        if part.hyp is None:
            return True
        toks = part.hyp.tokens
        return math.isfinite(part.logw) and len(toks) < limit and toks[-1] not in eos

    def step(self, search: Search) -> bool:
        if self._block >= self.blocks:
            search.end_sweep()
            return False
        limit = min(self._cap, (self._block + 1) * self._block_len)
        eos = frozenset(search.tokenizer.eos_ids)
        props: dict[int, Proposal] = {}
        for i, part in enumerate(self.state):
            if self._grows(part, limit, eos):
                prefix = () if part.hyp is None else part.hyp.tokens
                props[i] = Proposal("power_smc", len(prefix), prefix, decode=True, max_new=limit - len(prefix),
                                    temperature=self.temperature, seed=int(search.rng.integers(2**62)))
        results = search.evaluate(list(props.values()), parent=search.current, prune=False, admissible_only=False)
        by_key = {p.key: h for p, h in results}
        before = np.array([p.logw for p in self.state])
        inc = np.zeros(self.particles)
        new = list(self.state)
        for i, p in props.items():
            h = by_key.get(p.key)
            if h is None:  # outside the target's support (or not afforded): weight 0
                inc[i] = -math.inf
                new[i] = Particle(self.state[i].hyp, -math.inf)
            else:
                inc[i] = self.increment(self.state[i].hyp, h)
                new[i] = Particle(h, before[i] + inc[i])
        self.state = new
        self._update_evidence(before, inc)
        keep_best_complete(search, results)
        self._block += 1
        w = self.weights()
        if not w.any():  # every particle left the support: nothing to grow
            return False
        if self._block < self.blocks:
            ess = 1.0 / float(np.sum(w**2))  # equal weights give n up to rounding
            if ess <= (self.ess + 1e-9) * self.particles:
                idx = systematic_resample(w, float(search.rng.random()))
                self.state = [Particle(self.state[j].hyp, 0.0) for j in idx]
                self.resampled += 1
        return True

    def _update_evidence(self, before: np.ndarray, inc: np.ndarray) -> None:
        """log Z_hat += log sum_i W_i w_i, with W the normalised weights before the block."""
        W = normalised(before)
        if not W.any():
            self.log_evidence = -math.inf
            return
        terms = np.where(W > 0, np.log(np.where(W > 0, W, 1.0)) + inc, -math.inf)
        self.log_evidence += float(np.logaddexp.reduce(terms))

    def weights(self) -> np.ndarray:
        """The particles' normalised weights."""
        return normalised(np.array([p.logw for p in self.state]))

    def result(self, search: Search) -> Hypothesis:
        w = self.weights()
        if self.output == "sample" and w.sum() > 0:
            drawn = self.state[int(search.rng.choice(len(w), p=w))].hyp
            if drawn is not None:  # None: stopped before the first block, nothing sampled yet
                return drawn
        return search.best()

    def extras(self, search: Search) -> dict[str, Any]:
        """``"particles"``: each final particle (tokens, text, sum log P, finished, normalised weight);
        ``"log_evidence"``: the estimate of log Z (``None`` when every particle left the target's support);
        ``"resampled"``: how many times the particles were resampled."""
        decode = search.tokenizer.decode
        w = self.weights()
        return {"particles": [None if p.hyp is None else
                              {"tokens": list(p.hyp.tokens), "text": decode(p.hyp.tokens),
                               "logprob": p.hyp.logprob, "ended": p.hyp.ended, "weight": float(wi)}
                              for p, wi in zip(self.state, w)],
                "log_evidence": self.log_evidence if math.isfinite(self.log_evidence) else None,
                "resampled": self.resampled}
