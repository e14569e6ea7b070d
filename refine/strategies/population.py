"""Population search: a genetic algorithm over whole outputs, with the refine objective as fitness.

A population of ``size`` distinct outputs evolves for ``generations`` generations. Fitness is the refine objective
of a member (``hyp.value``); every member is scored exactly by the model, never estimated.

Seeding (the first step): the starting output Y0 and ``size - 1`` sampled alternatives. Each alternative keeps
Y0's first ``t`` tokens, ``t`` uniform in ``0..len(Y0)-1``, and samples the rest from the model at ``temperature``
(``t = 0`` is a full sample from the prompt), up to the output's length cap.

One generation (one step, one batched evaluation) makes ``size - elite`` children:

- *selection*: each parent is the best of ``tournament`` members drawn uniformly with replacement (tournament
  selection: the chance of being picked rises with the rank of the fitness, whatever its scale);
- *crossover* (probability ``crossover``): parents A and B (distinct outputs) give the child ``A[:i] + B[i:]`` at a
  cut ``i`` drawn uniformly among the *shared-state* cuts, where the ``match`` tokens before the cut are the same in
  both, ``A[i-match:i] == B[i-match:i]`` (and the child differs from both parents). The child's prefix thus ends in
  a context from which the model has already continued with B's suffix (exactly so for a model whose state is its
  last ``match`` tokens, approximately for a transformer), instead of splicing two unrelated contexts. The child is
  a scored proposal with its full tokens: its fitness is exact. Where A and B share no such cut, the child is a
  mutant of A instead;
- *mutation* (every other child: the mutation rate is ``1 - crossover``): ``positions`` distinct positions of the
  parent drawn uniformly; with probability ``resample`` the child keeps the parent's tokens before one of them and
  samples the rest at ``temperature``; otherwise it is one proposal drawn uniformly from what the configured moves
  (``RefineConfig.moves``: regenerate, substitute, ...) propose at those positions.

All children of a generation are evaluated in one batched :meth:`~refine.search.Search.evaluate` (scored and
decoded proposals together; pruning off, so a child is never dropped for its partial score). Replacement is
generational with elitism: the ``elite`` fittest members survive unchanged, the children fill the rest, and where
fewer distinct new children came back (invalid, duplicates, not afforded) the fittest remaining members of the old
population keep their places. A generation whose children are all already members adds nothing: the population
has converged and the search stops.

Population members move by these rules alone (they are evaluated with ``admissible_only=False``): what becomes the
output goes through :meth:`~refine.search.Search.accept`, which after every evaluation is offered the best candidate
admissible against the current output. So the result is the best admissible output visited, never worse than Y0,
and ``edits`` lists those improvements.

Budget: each generation (not the seeding) ends with one sweep, so ``budget.max_sweeps`` (default 3) caps the
number of generations as well as ``generations`` does: raise both to run longer. ``max_forward_tokens`` trims a
generation's children to what it affords (highest prior first) and stops the search when none fits;
``max_seconds`` and ``patience`` (in generations, one evaluation each) apply as usual.

Stochastic: ``RefineConfig.seed`` fixes every draw (cuts, selections, mutation choices, sampling seeds), so a run is
reproducible.

Example:
    >>> from refine import RefineConfig
    >>> cfg = RefineConfig(strategy="population", max_new_tokens=32, seed=1, budget={"max_sweeps": 6},
    ...                    strategy_options={"size": 8, "generations": 6, "elite": 2, "crossover": 0.5})
"""

from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError
from ..moves import Proposal
from ..search import Search
from ..strategy import STRATEGIES, Strategy
from ..types import Hypothesis
from .options import count, number, rate


def crossover_points(a: Sequence[int], b: Sequence[int], match: int = 1) -> list[int]:
    """The cuts ``i`` at which ``a[:i] + b[i:]`` is a crossover child of ``a`` and ``b`` sharing a prefix state.

    A cut qualifies when the ``match`` tokens before it are equal in both (``a[i-match:i] == b[i-match:i]``, so
    ``i >= match``), ``b`` keeps a non-empty suffix (``i < len(b)``), and the child differs from both parents.

    >>> crossover_points((1, 2, 3, 4), (9, 2, 5, 6))
    [2]
    >>> crossover_points((1, 2, 3), (1, 2, 5))
    []
    """
    out = []
    for i in range(match, min(len(a), len(b) - 1) + 1):
        if tuple(a[i - match:i]) != tuple(b[i - match:i]):
            continue
        child = tuple(a[:i]) + tuple(b[i:])
        if child != tuple(a) and child != tuple(b):
            out.append(i)
    return out


@STRATEGIES.register("population")
class Population(Strategy):
    """A genetic algorithm over outputs; see the module docstring for the scheme and the options' meaning.

    Args:
        size: members of the population (>= 2).
        generations: generations after the seeding (also capped by ``budget.max_sweeps``).
        elite: fittest members kept unchanged into the next generation (0 <= elite < size).
        crossover: probability a child is a crossover child (else a mutant).
        positions: positions drawn per mutant.
        resample: probability a mutant re-samples its suffix instead of taking a move's proposal.
        temperature: sampling temperature of seeds and re-sampled suffixes (> 0).
        tournament: members per selection tournament.
        match: tokens before a crossover cut that both parents must share.
    """

    def __init__(self, size: int = 8, generations: int = 3, elite: int = 2, crossover: float = 0.5,
                 positions: int = 2, resample: float = 0.5, temperature: float = 1.0, tournament: int = 2,
                 match: int = 1) -> None:
        self.size = count("size", size)
        if self.size < 2:
            raise ConfigError(f"`strategy_options.size` has to be an int >= 2, but is {size!r}")
        self.generations = count("generations", generations)
        if isinstance(elite, bool) or not isinstance(elite, int) or not 0 <= elite < self.size:
            raise ConfigError(f"`strategy_options.elite` has to be an int in [0, size={self.size}), but is {elite!r}")
        self.elite = elite
        self.crossover = rate("crossover", crossover)
        self.positions = count("positions", positions)
        self.resample = rate("resample", resample)
        self.temperature = number("temperature", temperature, 0.0)
        self.tournament = count("tournament", tournament)
        self.match = count("match", match)

    # ------------------------------------------------------------------ operators

    def _sample(self, search: Search, hyp: Hypothesis, t: int, move: str) -> Proposal:
        """``hyp``'s first ``t`` tokens, the rest sampled at ``temperature`` up to the length cap."""
        prefix = hyp.tokens[:t]
        seed = int(search.rng.integers(2**62))
        return Proposal(move, t, prefix, decode=True, max_new=search.max_output_tokens - t,
                        temperature=self.temperature, seed=seed)

    def select(self, search: Search, pool: Sequence[Hypothesis]) -> Hypothesis:
        """Tournament selection: the fittest of ``tournament`` members drawn uniformly with replacement."""
        picks = search.rng.integers(len(pool), size=self.tournament)
        return max((pool[int(k)] for k in picks), key=lambda h: h.value)

    def mutate(self, search: Search, hyp: Hypothesis) -> Proposal:
        """A mutant of ``hyp``: a re-sampled suffix or a move's proposal at ``positions`` random positions."""
        n = len(hyp.tokens)
        if n == 0:
            return self._sample(search, hyp, 0, "resample")
        k = min(self.positions, n)
        spots = sorted(int(i) for i in search.rng.choice(n, size=k, replace=False))
        if search.rng.random() < self.resample:
            return self._sample(search, hyp, spots[int(search.rng.integers(k))], "resample")
        pool = search.propose(hyp, spots)
        if not pool:
            return self._sample(search, hyp, spots[int(search.rng.integers(k))], "resample")
        return pool[int(search.rng.integers(len(pool)))]

    def cross(self, search: Search, a: Hypothesis) -> Proposal | None:
        """A crossover child with ``a`` as the prefix parent, or None where no partner shares a cut with it."""
        others = [h for h in self.members if h.tokens != a.tokens]
        if not others:
            return None
        return self.splice(search, a, self.select(search, others))

    def splice(self, search: Search, a: Hypothesis, b: Hypothesis) -> Proposal | None:
        """``a[:i] + b[i:]`` at a cut ``i`` drawn uniformly from :func:`crossover_points` (None if there is none),
        as a scored proposal with its full tokens."""
        cuts = crossover_points(a.tokens, b.tokens, self.match)
        if not cuts:
            return None
        i = cuts[int(search.rng.integers(len(cuts)))]
        return Proposal("crossover", i, a.tokens[:i] + b.tokens[i:])

    def offspring(self, search: Search) -> list[Proposal]:
        """``size - elite`` children of the current population (duplicates possible; evaluate merges them)."""
        out = []
        for _ in range(self.size - self.elite):
            a = self.select(search, self.members)
            child = self.cross(search, a) if search.rng.random() < self.crossover else None
            out.append(child if child is not None else self.mutate(search, a))
        return out

    # ------------------------------------------------------------------ the schedule

    def _evaluate(self, search: Search, proposals: list[Proposal]) -> list[Hypothesis]:
        """Score ``proposals`` in one batch; offer the best admissible one as the output; return the children in
        proposal order (one entry per distinct valid result)."""
        parent = max(self.members, key=lambda h: h.value)
        results = search.evaluate(proposals, parent=parent, prune=False, admissible_only=False)
        ok = [r for r in results if search.admissible(r[1], search.current)]
        if ok:
            search.accept(*max(ok, key=lambda r: r[1].value))
        return [h for _, h in results]

    def start(self, search: Search) -> None:
        assert search.current is not None
        self.members: list[Hypothesis] = [search.current]
        self.generation = 0
        self._seeded = False

    def step(self, search: Search) -> bool:
        if not self._seeded:
            y0 = self.members[0]
            props = [self._sample(search, y0, int(search.rng.integers(len(y0.tokens))), "sample")
                     for _ in range(self.size - 1)]
            self._seeded = True
            self.members = self._unique([y0] + self._evaluate(search, props))[: self.size]
            return True
        children = self._evaluate(search, self.offspring(search))
        old = sorted(self.members, key=lambda h: -h.value)
        known = {h.tokens for h in old}
        new = [h for h in self._unique(children) if h.tokens not in known]
        nxt = self._unique(old[: self.elite] + new[: self.size - self.elite] + old[self.elite:])
        self.members = nxt[: self.size]
        self.generation += 1
        search.end_sweep()
        return bool(new) and self.generation < self.generations

    @staticmethod
    def _unique(hyps: Sequence[Hypothesis]) -> list[Hypothesis]:
        """``hyps`` without repeated outputs, first occurrence kept."""
        seen: set[tuple[int, ...]] = set()
        out = []
        for h in hyps:
            if h.tokens not in seen:
                seen.add(h.tokens)
                out.append(h)
        return out
