"""Power sampling: Metropolis–Hastings on p(y|x)^alpha (Karan & Du 2025, "Reasoning with Sampling").

The target is pi(y) ∝ p(y|x)^alpha (``target="logp"``) or exp(alpha * objective(y)) (``target="objective"``).
One MH step from the chain's state y (length T):

1. cut position t ~ w(.|y): uniform over 0..T-1 (``cut="uniform"``), proportional to the model's entropy at each
   position (``"entropy"``), or uniform over the block's positions 0..L-1 whatever y (``"block"``; a cut at or
   past y's end leaves the state as it is);
2. suffix y'[t:] drawn token by token from p^(1/temperature), renormalised (default temperature 1/alpha, so the
   proposal is p^alpha step by step), up to the block's length limit; y'[:t] = y[:t];
3. accept with probability min(1, R),

       R = pi(y') w(t|y') q(y[t:] | y[:t]) / (pi(y) w(t|y) q(y'[t:] | y[:t])),

   where q(.|y[:t]) is the suffix proposal density. The reverse move cuts y' at the same t and redraws y[t:]:
   its density is known without a forward pass, because every token of a state was itself drawn from the proposal
   given the same prefix (the chain keeps the log-density of each token it drew). The cut terms matter whenever
   y and y' differ in length (uniform: 1/T against 1/T') or in entropy profile.

Block-wise (``blocks > 1``): the output grows ``ceil(max_new_tokens / blocks)`` tokens at a time; each block starts
by extending the state with a draw from the proposal, then runs ``steps`` MH steps whose target is p^alpha over
outputs cut at the block's length (cuts anywhere in the output so far). ``blocks=1`` draws one full output and runs
``steps`` MH steps on it. The starting output handed to refine does not seed the chain (the reverse density of
its tokens is unknown); it is the first "best so far". An empty start (:attr:`from_nothing`: ``refine(prompt,
"")``) makes the strategy a decoder, as the paper uses it: the chain's complete draws are the only candidates.

Batching (each evaluation is one batched decode):

- ``chains`` independent chains step together; each is a valid MH chain;
- ``proposals`` > 1 prepares that many MH steps of a chain at once: their cuts t_1, t_2, ... are drawn, and each
  suffix is drawn from the current state's prefix y[:t_k], all decoded in one batch. The steps are then taken in
  order. A rejection leaves the state as it was, so the next prepared proposal is still a draw from it. After an
  accepted move y -> y', the next prepared proposal is still a draw from y' when y' has y's length (so the uniform
  cut distribution is unchanged) and y'[:t_k] = y[:t_k]: its suffix was drawn from q(.|y[:t_k]) with randomness
  of its own, which nothing before step k looked at. The first prepared proposal for which that fails ends the
  batch: its cut t_k is kept (it was drawn independently of the chain's path, and whether it is kept depends on
  t_k itself, so re-drawing it would bias the cut) and its suffix is drawn again from y'[:t_k] in the next
  evaluation; the later prepared steps are dropped and drawn afresh (their cuts did not decide anything). When
  the length changed, or with ``cut="entropy"`` (whose weights change with the state), every prepared step
  after an accepted move is dropped, the kept cut included. So the chain is exactly the sequential MH chain;
  the dropped draws are wasted compute, paid for by decoding them in one batch instead of one after another.
  Each offered proposal counts as one of the block's ``steps``.

With ``cut="block"`` the cut's law depends on nothing in the state, so the chain is a random sequence of
fixed-cut MH kernels K_t, each in detailed balance with pi on its own (the cut terms drop out of R). Any order of
those kernels that is chosen independently of the chain keeps pi; the strategy offers each batch's prepared cuts
from the latest to the earliest. An accepted move at cut t_j then keeps every later offer's prefix
(t_k <= t_j), so no prepared proposal is ever dropped: ``proposals=steps`` takes a block's MH steps in one
batched decode. When a state fills its block (the usual case), its cuts are uniform over its positions, as with
``"uniform"``.

Block cuts with all of a block's steps in one batch also fold the block's extension into that batch, on backends
that branch decodes (``Search.can_fork``; the Hugging Face backend does): the block's cuts are drawn first (their
law does not depend on the state), the extension is decoded as one row, each proposal cut inside the old state
as another, and each proposal cut inside the new block branches off the extension row when that row reaches
its cut, with a copy of its cache. A block then takes as many sequential decoding steps as its longest
proposal, not the extension's steps plus those. The draws have the same law as extending first and proposing
after: a proposal's suffix is drawn from q given its prefix, whichever row's cache holds that prefix.

``alpha=inf`` is greedy acceptance: a proposal is accepted only if it raises the target by more than
``tolerance``; its proposal temperature defaults to 1 (sampling from p), since 1/alpha = 0 would re-decode the same
greedy suffix.

What it returns: ``output="best"`` (default) the best output by the refine objective among the starting output and
every complete proposal evaluated (one that ended or has the full length cap; an earlier block's draw is not an
answer), like every refine strategy (never worse than the start, and bound like every strategy by
:meth:`~refine.search.Search.admissible`: finished stays finished, no more degenerate); ``output="sample"`` the
final state of the first chain, a sample from the target (up to mixing), whatever its objective. The chains
themselves move by the MH rule alone: the admissibility rules compare a candidate with the output it would
replace, and applying them to the chain's moves would change the distribution it samples. Either way ``edits``
lists the improvements of the best output seen. Stochastic: ``RefineConfig.seed`` fixes the cut positions, the
acceptance draws and every sampling seed, so a run is reproducible.

Its length is ``blocks x (1 + ceil(steps / proposals))`` evaluations per chain (more when draws are dropped;
``blocks`` when each block's extension and steps share one batch);
``budget.max_sweeps`` does not bound it (one sweep is counted when the schedule ends), the other budget limits do.
Pruning is never applied to its proposals.

Example:
    >>> from refine import RefineConfig
    >>> cfg = RefineConfig(strategy="power", max_new_tokens=32, seed=1,
    ...                    strategy_options={"alpha": 4.0, "blocks": 4, "steps": 10})
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
from .options import choice, count, number

CUTS = ("uniform", "entropy", "block")
TARGETS = ("logp", "objective")
OUTPUTS = ("best", "sample")
#: failed attempts to draw a valid first output for a chain before the strategy gives up
MAX_INIT_TRIES = 8


@dataclass(frozen=True)
class ChainState:
    """One chain's state: the output and, per token, its log-density under the proposal that drew it."""

    hyp: Hypothesis
    logq: np.ndarray  # (len(hyp.tokens),)


@STRATEGIES.register("power")
class PowerSampling(Strategy):
    """Metropolis–Hastings power sampling; see the module docstring for the maths and the options' meaning.

    Args:
        alpha: the power (> 0, ``inf`` for greedy acceptance).
        steps: MH steps per block and chain.
        blocks: blocks the output grows by (1: one full draw, then ``steps`` MH steps).
        cut: ``"block"`` (default: uniform over the block's positions, batched steps never dropped),
            ``"uniform"`` (over the state's positions) or ``"entropy"`` (weighted by the model's entropy there).
        temperature: proposal temperature; ``None``: 1/alpha (1 when alpha is inf).
        target: ``"logp"`` (p^alpha) or ``"objective"`` (exp(alpha * objective)).
        chains: independent chains run side by side in each batch.
        proposals: proposals drawn at once per chain and step, offered in order (see above); default: all of a
            block's ``steps`` with block cuts, 1 otherwise.
        output: ``"best"`` (best by objective) or ``"sample"`` (the first chain's final state).
    """

    from_nothing = True

    def __init__(self, alpha: float = 4.0, steps: int = 10, blocks: int = 4, cut: str = "block",
                 temperature: float | None = None, target: str = "logp", chains: int = 1,
                 proposals: int | None = None, output: str = "best") -> None:
        if isinstance(alpha, str) and alpha.strip().lower() in ("inf", "infinity"):
            alpha = math.inf
        self.alpha = number("alpha", alpha, 0.0, inf_ok=True)
        self.steps = count("steps", steps)
        self.blocks = count("blocks", blocks)
        self.cut = choice("cut", cut, CUTS)
        self.temperature = (1.0 if self.alpha == math.inf else 1.0 / self.alpha) if temperature is None \
            else number("temperature", temperature, 0.0)
        self.target = choice("target", target, TARGETS)
        self.chains = count("chains", chains)
        if proposals is None:  # block cuts never drop a prepared step: take a block's steps in one batch
            proposals = self.steps if self.cut == "block" else 1
        self.proposals = count("proposals", proposals)
        self.output = choice("output", output, OUTPUTS)

    # ------------------------------------------------------------------ the maths

    def log_target(self, hyp: Hypothesis) -> float:
        """log pi(y) / alpha, up to a constant: sum log p(y|x), or the objective's value."""
        return hyp.logprob if self.target == "logp" else hyp.value

    def cut_weights(self, hyp: Hypothesis) -> np.ndarray:
        """w(t|y) for t = 0..len(y)-1 (sums to 1); for ``cut="block"`` the uniform weights over the state's own
        positions (the cut actually used is uniform over the block's positions, whatever the state)."""
        n = len(hyp.tokens)
        if self.cut in ("uniform", "block"):
            return np.full(n, 1.0 / n)
        h = np.maximum(np.asarray(hyp.scores.entropy, dtype=np.float64), 0.0) + 1e-3  # never exactly 0
        return h / h.sum()

    def log_accept(self, cur: ChainState, new: ChainState, t: int) -> float:
        """log R of moving from ``cur`` to ``new``, which share the tokens before ``t`` (alpha finite)."""
        gain = self.alpha * (self.log_target(new.hyp) - self.log_target(cur.hyp))
        if self.cut == "block":  # the cut's law does not depend on the state: no cut term
            cuts = 0.0
        else:
            cuts = math.log(self.cut_weights(new.hyp)[t]) - math.log(self.cut_weights(cur.hyp)[t])
        proposal = float(np.sum(cur.logq[t:])) - float(np.sum(new.logq[t:]))  # reverse minus forward density
        return gain + cuts + proposal

    def accepts(self, search: Search, cur: ChainState, new: ChainState, t: int) -> bool:
        """The MH test (``alpha=inf``: the target must rise by more than ``tolerance``)."""
        if self.alpha == math.inf:
            return self.log_target(new.hyp) > self.log_target(cur.hyp) + search.config.tolerance
        log_r = self.log_accept(cur, new, t)
        return log_r >= 0 or math.log(search.rng.random()) < log_r

    # ------------------------------------------------------------------ the schedule

    def start(self, search: Search) -> None:
        self._limit_total = search.max_output_tokens
        self._block_len = math.ceil(self._limit_total / self.blocks)
        self._block = 0
        self._done = [0] * self.chains  # MH steps taken in the current block, per chain
        self._tries = 0  # failed first draws
        self._grown = False  # the current block's extensions are drawn
        self._cut_next: list[int | None] = [None] * self.chains  # a chain's next cut, kept from a dropped draw
        self.states: list[ChainState | None] = [None] * self.chains

    def _limit(self) -> int:
        """Length limit of the current block."""
        return min(self._limit_total, (self._block + 1) * self._block_len)

    def _draw(self, search: Search, prefix: tuple[int, ...], max_new: int,
              fork: tuple[tuple, int] | None = None) -> Proposal:
        """A suffix drawn from the proposal after ``prefix``; ``fork=(key, keep)``: after the first ``keep``
        tokens of the draw with that key (``prefix`` and ``max_new`` being that draw's)."""
        seed = int(search.rng.integers(2**62))
        position = len(prefix) + (0 if fork is None else fork[1])
        return Proposal("power", position, prefix, decode=True, max_new=max_new, temperature=self.temperature,
                        seed=seed, fork=fork)

    def _extend(self, c: int, h: Hypothesis) -> None:
        """Chain ``c``'s state becomes its extension ``h`` (drawn after the state, or from nothing)."""
        old = np.zeros(0) if self.states[c] is None else self.states[c].logq
        assert h.sampled is not None and len(old) + len(h.sampled) == len(h.tokens)
        self.states[c] = ChainState(h, np.concatenate([old, h.sampled]))

    def _mh_step(self, search: Search, c: int, t: int, h: Hypothesis | None) -> None:
        """One MH step of chain ``c`` to the proposal ``h`` cut at ``t`` (None: outside the target's support, or
        not afforded: rejected), then :meth:`observe`."""
        cur = self.states[c]
        if h is not None:
            new = ChainState(h, np.concatenate([cur.logq[:t], h.sampled]))
            if self.accepts(search, cur, new, t):
                self.states[c] = new
        self.observe(c, self.states[c])

    def _open(self, state: ChainState | None, limit: int, eos: frozenset[int]) -> bool:
        """Whether a chain needs a draw before its MH steps: no state yet, or one that may grow to ``limit``."""
        if state is None:
            return True
        toks = state.hyp.tokens
        return len(toks) < limit and toks[-1] not in eos

    def step(self, search: Search) -> bool:
        if self._block >= self.blocks:
            search.end_sweep()
            return False
        limit = self._limit()
        eos = frozenset(search.tokenizer.eos_ids)
        parent = next((s.hyp for s in self.states if s is not None), search.current)
        if self.cut == "block" and self.proposals >= self.steps and search.can_fork:
            return self._block_step(search, limit, eos, parent)

        # 1. start of a block: extend every chain that can grow (or draw its first output)
        grow = [c for c, s in enumerate(self.states) if self._done[c] == 0 and self._open(s, limit, eos)]
        if grow and not self._grown:
            props = {}
            for c in grow:
                prefix = () if self.states[c] is None else self.states[c].hyp.tokens
                props[c] = self._draw(search, prefix, limit - len(prefix))
            results = search.evaluate(list(props.values()), parent=parent, prune=False, admissible_only=False)
            by_key = {p.key: h for p, h in results}
            for c, p in props.items():
                h = by_key.get(p.key)
                if h is None:  # invalid (e.g. too short) or not afforded
                    if self.states[c] is None:
                        self._tries += 1
                    continue
                self._extend(c, h)
            keep_best_complete(search, results)
            if any(s is None for s in self.states):
                return self._tries < MAX_INIT_TRIES * self.chains
            self._grown = True
            return True

        # 2. MH steps: `proposals` draws per chain from its current state, decoded in one batch
        offers: dict[int, list[tuple[int, Proposal]]] = {}
        for c, state in enumerate(self.states):
            k = min(self.proposals, self.steps - self._done[c])
            if state is None or k <= 0:
                continue
            offers[c] = []
            if self.cut == "block":  # latest cut first: no accepted move can change a later offer's prefix
                cuts = self._block_cuts(search, state, k, limit)
                n = len(state.hyp.tokens)
                offers[c] = [(t, None if t >= n else self._draw(search, state.hyp.tokens[:t], limit - t))
                             for t in cuts]
                continue
            w = self.cut_weights(state.hyp)
            for _ in range(k):
                t, self._cut_next[c] = self._cut_next[c], None
                if t is None:
                    t = int(search.rng.choice(len(w), p=w))
                offers[c].append((t, self._draw(search, state.hyp.tokens[:t], limit - t)))
        results = search.evaluate([p for offer in offers.values() for _, p in offer if p is not None],
                                  parent=parent, prune=False, admissible_only=False)
        by_key = {p.key: h for p, h in results}
        for c, offer in offers.items():
            drawn_from = self.states[c]  # the state every offer's cut and prefix were drawn from
            for t, p in offer:
                cur = self.states[c]
                if p is None:  # a block cut past the state's end: the step stays
                    self._done[c] += 1
                    self.observe(c, cur)
                    continue
                if cur is not drawn_from and not self._still_valid(drawn_from, cur, t):
                    if self.cut == "uniform" and len(cur.hyp.tokens) == len(drawn_from.hyp.tokens):
                        self._cut_next[c] = t  # the cut stands; its suffix is drawn again from cur
                    break  # this and the later offers: dropped (see the module docstring)
                self._done[c] += 1
                self._mh_step(search, c, t, by_key.get(p.key))
        keep_best_complete(search, results)
        if all(d >= self.steps for d, s in zip(self._done, self.states) if s is not None):
            self._block += 1
            self._done = [0] * self.chains
            self._cut_next = [None] * self.chains
            self._grown = False
        return True

    def _block_step(self, search: Search, limit: int, eos: frozenset[int], parent: Hypothesis) -> bool:
        """A whole block in one evaluation: every chain's extension and its ``steps`` proposals (see the module
        docstring), then the MH steps in order, latest cut first."""
        plans = {}  # chain -> (extension proposal or None, [(cut, proposal or None)])
        for c, state in enumerate(self.states):
            toks = () if state is None else state.hyp.tokens
            n = len(toks)
            grow = self._draw(search, toks, limit - n) if self._open(state, limit, eos) else None
            offers = []
            for t in self._block_cuts(search, state, self.steps, limit):
                if t < n or (t == n and grow is not None):  # the prefix is known: an ordinary draw
                    offers.append((t, self._draw(search, toks[:t], limit - t)))
                elif grow is not None:  # inside the extension: branch off it after its first t - n tokens
                    offers.append((t, self._draw(search, toks, limit - n, fork=(grow.key, t - n))))
                else:  # past the end of a state that cannot grow: the step stays
                    offers.append((t, None))
            plans[c] = (grow, offers)
        props = [p for grow, offers in plans.values() for p in [grow, *(q for _, q in offers)] if p is not None]
        results = search.evaluate(props, parent=parent, prune=False, admissible_only=False)
        by_key = {p.key: h for p, h in results}
        for c, (grow, offers) in plans.items():
            if grow is not None:
                h = by_key.get(grow.key)
                if h is None:  # invalid (e.g. too short) or not afforded: its branches are void, the block is retried
                    if self.states[c] is None:
                        self._tries += 1
                    continue
                self._extend(c, h)
            for t, p in offers:
                cur = self.states[c]
                if p is None or t >= len(cur.hyp.tokens):  # a cut past the state's end: the step stays
                    self.observe(c, cur)
                    continue
                h = by_key.get(p.key)
                assert h is None or h.tokens[:t] == cur.hyp.tokens[:t], "latest cut first keeps later prefixes"
                self._mh_step(search, c, t, h)
        keep_best_complete(search, results)
        if any(s is None for s in self.states):
            return self._tries < MAX_INIT_TRIES * self.chains
        if all(grow is None or by_key.get(grow.key) is not None for grow, _ in plans.values()):
            self._block += 1
        return True

    def _block_cuts(self, search: Search, state: ChainState, k: int, limit: int) -> list[int]:
        """``k`` cuts for ``cut="block"``: uniform over the block's positions 0..limit-1 (whatever ``state``),
        latest first."""
        return sorted((int(search.rng.integers(limit)) for _ in range(k)), reverse=True)

    def _still_valid(self, old: ChainState, new: ChainState, t: int) -> bool:
        """Whether a proposal prepared from ``old`` with cut ``t`` is a proposal from ``new`` with the same law:
        the same prefix before ``t``, and (uniform cuts) equal lengths; entropy-weighted cuts never."""
        same_prefix = new.hyp.tokens[:t] == old.hyp.tokens[:t]
        if self.cut == "block":
            return same_prefix
        return self.cut == "uniform" and len(new.hyp.tokens) == len(old.hyp.tokens) and same_prefix

    def observe(self, chain: int, state: ChainState) -> None:
        """Called after every MH step with the chain's state then (moved or not): a hook for diagnostics. The
        states at MH steps, not at evaluations, follow the chain (an evaluation may hold several steps)."""

    def result(self, search: Search) -> Hypothesis:
        if self.output == "sample" and self.states and self.states[0] is not None:
            return self.states[0].hyp
        return search.best()

    def extras(self, search: Search) -> dict[str, Any]:
        """``"samples"``: each chain's final state (tokens, text, sum log P, finished), a draw from the target up
        to mixing, whichever output ``output`` returns; ``None`` for a chain that never drew a first output."""
        decode = search.tokenizer.decode
        return {"samples": [None if st is None else
                            {"tokens": list(st.hyp.tokens), "text": decode(st.hyp.tokens),
                             "logprob": st.hyp.logprob, "ended": st.hyp.ended}
                            for st in self.states]}
