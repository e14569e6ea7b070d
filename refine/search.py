"""The search engine shared by all strategies.

:class:`Search` owns the budget, the objective, the acceptance rule and the memo of
evaluated candidates; strategies only decide *what* to evaluate next. One place for
each piece of maths: objective values are computed in :meth:`Search.evaluate`,
acceptance is decided in :meth:`Search.accept`, and what may replace an output at all,
whatever it scores, in :meth:`Search.admissible`:

- *finished stays finished*: an output that ends (EOS within the length cap) is only
  replaced by one that also ends. A cut output (the initial one ran into the cap) may be
  replaced by any candidate that scores better, finished or cut; once a finished one is
  accepted, the rule above holds.
- *no more degenerate*: with ``repeat_guard`` on, a candidate that repeats more word
  n-grams or more line patterns than the output it would replace is refused
  (:mod:`refine.degeneration`).

:func:`run_search` drives a strategy until it converges or a budget limit is reached,
and returns a :class:`~refine.types.RefineResult`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

from .backends.base import DecodeRequest, Session, TokenizerView
from .config import RefineConfig
from .degeneration import count_repeats
from .errors import BudgetExhausted, ConfigError
from .moves import MoveContext, Proposal, build_moves, rank_positions
from .objectives import CandidateView, Objective
from .strategy import STRATEGIES, Strategy
from .types import Edit, Hypothesis, RefineResult, Scores, Stats


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def changed_span(old: Sequence[int], new: Sequence[int]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """``(position, old_tokens, new_tokens)`` of the smallest span that turns ``old`` into ``new``.

    >>> changed_span((1, 2, 3, 4), (1, 9, 3, 4))
    (1, (2,), (9,))
    """
    p = common_prefix(old, new)
    s = 0
    while s < min(len(old), len(new)) - p and old[len(old) - 1 - s] == new[len(new) - 1 - s]:
        s += 1
    return p, tuple(old[p : len(old) - s]), tuple(new[p : len(new) - s])


class Search:
    """State of one refinement: the current hypothesis, the budget, the memo and the statistics.

    Strategies call :meth:`evaluate` to score proposals (batched, within budget) and :meth:`accept` to move.
    """

    def __init__(
        self,
        session: Session,
        tokenizer: TokenizerView,
        config: RefineConfig,
        max_output_tokens: int,
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.config = config
        self.budget = config.budget
        self.objective: Objective = config.objective_fn
        self.objective.bind(tokenizer)
        self.moves = build_moves(config.moves)
        self.move_context = MoveContext(
            tokenizer=tokenizer,
            top_k=config.top_k,
            length=config.length,
            regen_extra_tokens=config.regen_extra_tokens,
            max_output_tokens=max_output_tokens,
            exclude_special=config.exclude_special,
            require_roundtrip=config.require_roundtrip,
            regen_beam=config.regen_beam,
        )
        self.max_output_tokens = max_output_tokens
        self.rng = np.random.default_rng(config.seed)
        self.stats = Stats()
        self.edits: list[Edit] = []
        self.current: Hypothesis | None = None
        self.initial: Hypothesis | None = None
        self._memo: dict[tuple, Hypothesis] = {}
        self._pruned: set[tuple] = set()  # re-decodings abandoned early: not tried again
        self._t0 = time.perf_counter()
        self._eos = frozenset(tokenizer.eos_ids)
        self._base_tokens = session.forward_tokens
        self._base_calls = session.forward_calls

    # ------------------------------------------------------------------ budget

    @property
    def spent(self) -> int:
        """Forward tokens spent by this search (the session may have spent some before it)."""
        return self.session.forward_tokens - self._base_tokens

    @property
    def calls(self) -> int:
        return self.session.forward_calls - self._base_calls

    def remaining_tokens(self) -> float:
        cap = self.budget.max_forward_tokens
        return float("inf") if cap is None else cap - self.spent

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    # ------------------------------------------------------------------ proposing

    def sweep_positions(self, hyp: Hypothesis) -> list[int]:
        """The positions of ``hyp`` one sweep visits: ``config.positions`` order, the first ``max_positions``."""
        order = rank_positions(hyp, self.config.positions)
        return order[: self.config.max_positions] if self.config.max_positions else order

    def propose(self, hyp: Hypothesis, positions: Sequence[int]) -> list[Proposal]:
        """Every configured move's proposals at each of ``positions`` of ``hyp`` (positions past its end skipped)."""
        return [p for i in positions if i < len(hyp.tokens)
                for move in self.moves for p in move.propose(hyp, i, self.move_context)]

    # ------------------------------------------------------------------ scoring

    def _views(self, items: Sequence[tuple[tuple[int, ...], Scores]]) -> list[CandidateView]:
        need_text = self.objective.needs_text
        return [
            CandidateView(
                tokens=toks,
                logprobs=sc.logprobs,
                text=self.tokenizer.decode(toks) if need_text else None,
                ended=bool(toks) and toks[-1] in self._eos,
            )
            for toks, sc in items
        ]

    def _hypotheses(self, items: Sequence[tuple[tuple[int, ...], Scores]]) -> list[Hypothesis]:
        views = self._views(items)
        values, terms = self.objective.evaluate(views)
        n = self.config.repeat_guard
        out = []
        for (toks, sc), v, t, view in zip(items, values, terms, views):
            text, repeats = view.text, None
            if n is not None:
                text = self.tokenizer.decode(toks) if text is None else text
                repeats = count_repeats(text, n)
            out.append(Hypothesis(tokens=toks, scores=sc, value=float(v), terms=t, text=text, ended=view.ended,
                                  repeats=repeats))
        return out

    def score_initial(self, tokens: Sequence[int]) -> Hypothesis:
        """Score the starting output; sets :attr:`current` and :attr:`initial`."""
        tokens = tuple(int(t) for t in tokens)
        cost = self.session.score_cost([tokens])
        if cost > self.remaining_tokens():
            raise ConfigError(
                f"`budget.max_forward_tokens`={self.budget.max_forward_tokens} cannot even score the initial "
                f"output (needs {cost} tokens); raise it or set it to None"
            )
        ((start, sc),) = self.session.score([tokens])
        assert start == 0
        self.stats.forward_calls = self.calls
        (hyp,) = self._hypotheses([(tokens, sc)])
        self.current = self.initial = hyp
        self._memo[(tokens,)] = hyp
        return hyp

    @staticmethod
    def _request(p: Proposal) -> DecodeRequest:
        return DecodeRequest(p.tokens, p.max_new, p.min_new, p.force_eos, p.beam, p.temperature, p.seed)

    def _cost(self, parent: Hypothesis, props: Sequence[Proposal]) -> int:
        scored = [p.tokens for p in props if not p.decode]
        decoded = [self._request(p) for p in props if p.decode]
        cost = self.session.score_cost(scored, parent.tokens) if scored else 0
        if decoded:
            cost += self.session.decode_cost(decoded, parent.tokens)
        return cost

    def evaluate(self, proposals: Sequence[Proposal], parent: Hypothesis | None = None, prune: bool = True,
                 admissible_only: bool = True) -> list[tuple[Proposal, Hypothesis]]:
        """Score ``proposals`` derived from ``parent`` (default: the current hypothesis), batched and within budget.

        All scored proposals go to the backend in one call, all re-decoded ones in another. Candidates seen
        before come from the memo at no cost. If the budget cannot afford all new ones, the most promising
        (highest ``prior``) are kept; if it cannot afford one, :class:`BudgetExhausted`. ``prune=False`` decodes
        every suffix to its end whatever ``prune_margin`` says (a sampler must not drop proposals by outcome).
        Candidates not :meth:`admissible` against ``parent`` are left out, unless ``admissible_only=False``: a
        sampler's chain moves by its own rule (the relative rules would bias its kernel); only what becomes the
        output is bound by them, through :meth:`accept`.

        ``parent`` only saves compute: any output works (a proposal that shares less of it costs more tokens).
        """
        parent = self.current if parent is None else parent
        assert parent is not None, "score_initial() first"
        seen: set[tuple] = set()
        fresh: list[Proposal] = []
        results: list[tuple[Proposal, Hypothesis]] = []
        for p in proposals:
            if p.key in seen:
                continue
            seen.add(p.key)
            content = len(p.tokens) - (1 if p.tokens and p.tokens[-1] in self._eos else 0)
            if not p.decode and (content < self.config.min_tokens or len(p.tokens) > self.max_output_tokens):
                continue
            if p.key in self._memo:
                results.append((p, self._memo[p.key]))
            elif p.key not in self._pruned:
                fresh.append(p)
        if fresh:
            fresh.sort(key=lambda p: -p.prior)  # stable: ties keep proposal order
            while fresh and self._cost(parent, fresh) > self.remaining_tokens():
                fresh.pop()
            if not fresh:
                raise BudgetExhausted()
            results.extend(self._run(parent, fresh, prune))
        self.stats.candidates += len(results)
        self.stats.forward_calls = self.calls
        valid = [(p, h) for p, h in results if self._valid(h)]
        if not admissible_only:
            return valid
        kept = [(p, h) for p, h in valid if self.admissible(h, parent)]
        self.stats.refused += len(valid) - len(kept)
        return kept

    def _valid(self, h: Hypothesis) -> bool:
        content = len(h.tokens) - (1 if h.tokens and h.tokens[-1] in self._eos else 0)
        return content >= self.config.min_tokens and np.isfinite(h.value)

    def _run(self, parent: Hypothesis, props: Sequence[Proposal], prune: bool = True
             ) -> list[tuple[Proposal, Hypothesis]]:
        scored = [p for p in props if not p.decode]
        decoded = [p for p in props if p.decode]
        items: list[tuple[Proposal, tuple[int, ...], Scores]] = []
        sampled: dict[int, np.ndarray] = {}  # item index -> log-densities of its sampled tokens
        if scored:
            for p, (start, sc) in zip(scored, self.session.score([p.tokens for p in scored], parent.tokens)):
                items.append((p, p.tokens, Scores.concat([parent.scores.slice(0, start), sc])))
        if decoded:
            reqs = [self._request(p) for p in decoded]
            room = self.remaining_tokens()
            limit = None if room == float("inf") else room
            outs = self.session.decode(reqs, parent.tokens, limit, self._pruner(parent) if prune else None)
            for p, (start, dec) in zip(decoded, outs):
                if dec.pruned:
                    self._pruned.add(p.key)
                    self.stats.pruned += 1
                    continue
                if dec.sample_logprobs is not None:
                    sampled[len(items)] = dec.sample_logprobs
                items.append((p, dec.tokens, Scores.concat([parent.scores.slice(0, start), dec.scores])))
        hyps = self._hypotheses([(toks, sc) for _, toks, sc in items])
        hyps = [dataclasses.replace(h, sampled=sampled[j]) if j in sampled else h for j, h in enumerate(hyps)]
        out = []
        for (p, _, _), h in zip(items, hyps):
            self._memo[p.key] = h
            out.append((p, h))
        return out

    def _pruner(self, parent: Hypothesis):
        """The lookahead test for re-decoded suffixes: stop one whose partial output scores worse than the
        parent cut at the same length by more than ``prune_margin`` (the parent's full value once longer),
        unless its lead over the parent ranks among the ``prune_keep`` best leads of this batch (each row's
        lead as of its latest check; stopped rows drop out).

        Heuristic by design: it only decides what to finish decoding; accepted candidates are always complete
        and exactly scored. Off when ``prune_margin`` is None or the objective reads text.
        """
        margin = self.config.prune_margin
        keep = self.config.prune_keep
        if margin is None or self.objective.needs_text:
            return None
        par_lp = parent.scores.logprobs
        leads: dict[int, float] = {}  # row -> lead over the parent at its latest check (rows not stopped)

        def prune(row: int, tokens: tuple, scores: Scores) -> bool:
            start = len(tokens) - len(scores)
            cand = CandidateView(tokens, np.concatenate([par_lp[:start], scores.logprobs]))
            L = len(tokens)
            if L >= len(parent.tokens):
                (v,), _ = self.objective.evaluate([cand])
                lead = v - parent.value
            else:
                ref = CandidateView(parent.tokens[:L], par_lp[:L])
                (v, ref_v), _ = self.objective.evaluate([cand, ref])
                lead = v - ref_v
            leads[row] = lead
            if lead >= -margin:
                return False
            if keep is not None and sum(x > lead for x in leads.values()) < keep:
                return False
            del leads[row]
            return True

        return prune

    # ------------------------------------------------------------------ moving

    def admissible(self, cand: Hypothesis, than: Hypothesis) -> bool:
        """Whether ``cand`` may replace ``than`` at all, whatever either scores (the module docstring's rules).

        :meth:`evaluate` returns only candidates admissible against their parent, so a strategy's best
        candidate is never one the guard would throw away; :meth:`accept` checks again against the current
        output (a strategy may evaluate from another parent).
        """
        if than.ended and not cand.ended:
            return False
        guarded = cand.repeats is not None and than.repeats is not None
        return not (guarded and cand.repeats.exceeds(than.repeats))

    def accept(self, proposal: Proposal, cand: Hypothesis) -> bool:
        """Move to ``cand`` if it is :meth:`admissible` and beats the current value by more than ``tolerance``.
        The one acceptance rule."""
        cur = self.current
        assert cur is not None
        if not (self.admissible(cand, cur) and cand.value > cur.value + self.config.tolerance):
            return False
        pos, old, new = changed_span(cur.tokens, cand.tokens)
        self.edits.append(Edit(proposal.move, pos, old, new, cur.value, cand.value, self.stats.steps))
        self.current = cand
        self.stats.accepted += 1
        return True

    def best(self) -> Hypothesis:
        assert self.current is not None
        return self.current


ProgressFn = Callable[[Search], None]


def run_search(
    session: Session,
    tokenizer: TokenizerView,
    output: Sequence[int],
    config: RefineConfig,
    max_output_tokens: int,
    progress: ProgressFn | None = None,
) -> RefineResult:
    """Refine ``output`` for ``session.prompt`` with ``config``; return what the strategy returns (the best
    output found, unless a sampler was asked for its sample)."""
    search = Search(session, tokenizer, config, max_output_tokens)
    init = search.score_initial(output)
    strategy_cls = STRATEGIES.get(config.strategy, field="strategy")
    strategy: Strategy = strategy_cls(**config.strategy_options)
    strategy.start(search)
    budget = config.budget
    idle = 0
    stop = "converged"
    while True:
        if budget.max_seconds is not None and search.elapsed() >= budget.max_seconds:
            stop = "max_seconds"
            break
        if search.stats.sweeps >= budget.max_sweeps:
            stop = "max_sweeps"
            break
        if budget.patience is not None and idle >= budget.patience:
            stop = "patience"
            break
        accepted_before = search.stats.accepted
        try:
            more = strategy.step(search)
        except BudgetExhausted:
            stop = "max_forward_tokens"
            break
        search.stats.steps += 1
        idle = 0 if search.stats.accepted > accepted_before else idle + 1
        if progress is not None:
            progress(search)
        if not more:
            stop = "converged"
            break
    best = strategy.result(search)
    stats = search.stats
    stats.forward_tokens = search.spent
    stats.forward_calls = search.calls
    stats.seconds = search.elapsed()
    stats.stop_reason = stop
    return RefineResult(
        tokens=list(best.tokens),
        text=tokenizer.decode(best.tokens),
        score=best.value,
        initial_tokens=list(init.tokens),
        initial_text=tokenizer.decode(init.tokens),
        initial_score=init.value,
        terms=dict(best.terms),
        initial_terms=dict(init.terms),
        edits=list(search.edits),
        stats=stats,
        prompt_tokens=list(session.prompt),
        ended=best.ended,
        initial_ended=init.ended,
    )
