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
- *a wrap goes around the answer*: with ``wrap`` set, a candidate wrapped in one of its pairs
  keeps at least half of the initial output's characters inside the wrap, and the guards below
  read the text inside (:mod:`refine.phrases`).
- *no more degenerate*: with ``repeat_guard`` on, a candidate that repeats more word
  n-grams or more line patterns than the output it would replace is refused; with
  ``echo_guard`` on, one that quotes more spans of the prompt than it is refused too
  (:mod:`refine.degeneration`).

With a second model as scorer (:class:`~refine.scorer.Scorer`), proposals still come from
the generator's session while the objective's terms read the scorer's tokens and
log-probabilities; the budget and the statistics count both models' forward tokens, and
each model's batch is checked against the budget before it runs.

:func:`run_search` drives a strategy until it converges or a budget limit is reached,
and returns a :class:`~refine.types.RefineResult`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import numpy as np

from .backends.base import DecodeRequest, Session, TokenizerView
from .config import RefineConfig
from .degeneration import ECHO_N, count_repeats, ngram_set
from .errors import BudgetExhausted, ConfigError, InputError
from .diff import changed_span
from .forbid import forbidden_ids, mask_in, positions_first
from .lookahead import lookahead_pruner
from .moves import MoveContext, PhraseMove, Proposal, build_moves, rank_positions
from .phrases import encode_phrases, unwrap, unwrapped_length
from .objectives import CandidateView, Objective
from .scorer import Scorer
from .strategy import STRATEGIES, Strategy
from .types import Edit, Hypothesis, RefineResult, Scores, Stats


def _from_nothing() -> list[str]:
    """Names of the registered strategies that may start from an empty output."""
    return [n for n in STRATEGIES.names() if STRATEGIES.get(n).from_nothing]


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
        scorer: Scorer | None = None,
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.config = config
        self.budget = config.budget
        #: the second model that computes the objective's terms (None: the generator's own scores)
        self.scorer = scorer
        #: this search's own objective and strategy, built from the (immutable) config once per search
        self.objective: Objective = config.build_objective()
        self.objective.bind(tokenizer if scorer is None else scorer.tokenizer)
        self.strategy: Strategy = config.build_strategy()
        self.moves = build_moves(config.moves)
        #: ids ``config.forbid`` rules out: never proposed, masked in the session's decoding
        self.forbidden = forbidden_ids(tokenizer, config.forbid)
        mask_in(session, self.forbidden)
        phrase_ids = encode_phrases(tokenizer, config.phrases, self.forbidden | frozenset(
            tokenizer.special_ids if config.exclude_special else ()))
        #: the ``phrase`` move, when ``config.phrases`` is set: coordinate descent runs it over every spot of the
        #: output as a block of its own (:meth:`propose_phrases`); other strategies where ``moves`` names it
        self.phrase_move: PhraseMove | None = PhraseMove() if phrase_ids or config.wrap else None
        self.move_context = MoveContext(
            tokenizer=tokenizer,
            top_k=config.top_k,
            length=config.length,
            regen_extra_tokens=config.regen_extra_tokens,
            max_output_tokens=max_output_tokens,
            exclude_special=config.exclude_special,
            require_roundtrip=config.require_roundtrip,
            regen_beam=config.regen_beam,
            forbidden=self.forbidden,
            phrases=phrase_ids,
            wraps=config.wrap,
        )
        self.max_output_tokens = max_output_tokens
        #: the prompt's word n-grams, for the echo guard (``config.echo_guard``; empty when it is off), less those
        #: inside a phrase of ``config.phrases``: text the user asks to be written is not an echo
        self._prompt_grams: frozenset = frozenset()
        if config.echo_guard is not None:
            # (the guards read the answer inside a wrap, so a wrap's own text needs no such exception)
            asked = set().union(*(ngram_set(p, config.echo_guard) for p in config.phrases))
            self._prompt_grams = ngram_set(tokenizer.decode(list(session.prompt)), config.echo_guard) - asked
        self.rng = np.random.default_rng(config.seed)
        self.stats = Stats()
        self.edits: list[Edit] = []
        self.current: Hypothesis | None = None
        self.initial: Hypothesis | None = None
        self._memo: dict[tuple, Hypothesis] = {}
        #: with ``config.wrap``: the least answer (characters) a wrapped candidate keeps inside its wrap, half of
        #: the initial output's (set by :meth:`score_initial`)
        self._min_wrapped = 0
        self._pruned: set[tuple] = set()  # re-decodings abandoned early: not tried again
        self._cut_by_budget = False  # whether an evaluation left proposals out for want of budget
        self._t0 = time.perf_counter()
        self._eos = frozenset(tokenizer.eos_ids)
        self._base_tokens = session.forward_tokens
        self._base_calls = session.forward_calls
        self._base_scorer = (0, 0) if scorer is None else (scorer.forward_tokens, scorer.forward_calls)

    # ------------------------------------------------------------------ budget

    @property
    def scorer_spent(self) -> int:
        """Forward tokens the scorer model spent in this search (0 without one)."""
        return 0 if self.scorer is None else self.scorer.forward_tokens - self._base_scorer[0]

    @property
    def scorer_calls(self) -> int:
        return 0 if self.scorer is None else self.scorer.forward_calls - self._base_scorer[1]

    @property
    def spent(self) -> int:
        """Forward tokens spent by this search, both models together (the sessions may have spent some before)."""
        return self.session.forward_tokens - self._base_tokens + self.scorer_spent

    @property
    def calls(self) -> int:
        return self.session.forward_calls - self._base_calls + self.scorer_calls

    def _count(self) -> None:
        self.stats.forward_calls = self.calls
        self.stats.scorer_forward_tokens = self.scorer_spent
        self.stats.scorer_forward_calls = self.scorer_calls

    def remaining_tokens(self) -> float:
        cap = self.budget.max_forward_tokens
        return float("inf") if cap is None else cap - self.spent

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def out_of_time(self) -> bool:
        """Whether ``budget.max_seconds`` has passed (a strategy that loops within a step asks this)."""
        return self.budget.max_seconds is not None and self.elapsed() >= self.budget.max_seconds

    def end_sweep(self) -> None:
        """A strategy calls this when it has finished one pass over the positions (its own notion of a sweep).
        The driver stops the search once ``budget.max_sweeps`` sweeps are done; strategies never check it."""
        self.stats.sweeps += 1

    # ------------------------------------------------------------------ proposing

    def sweep_positions(self, hyp: Hypothesis) -> list[int]:
        """The positions of ``hyp`` one sweep visits: ``config.positions`` order, the first ``max_positions``."""
        order = positions_first(hyp.tokens, rank_positions(hyp, self.config.positions), self.forbidden)
        return order[: self.config.max_positions] if self.config.max_positions else order

    def propose(self, hyp: Hypothesis, positions: Sequence[int]) -> list[Proposal]:
        """Every configured move's proposals at each of ``positions`` of ``hyp`` (positions past its end skipped)."""
        return [p for i in positions if i < len(hyp.tokens)
                for move in self.moves for p in move.propose(hyp, i, self.move_context)]

    def propose_phrases(self, hyp: Hypothesis) -> list[Proposal]:
        """The ``phrase`` move's proposals at every spot of ``hyp`` where a phrase may go, and its wraps at the start
        (none without ``phrases`` or ``wrap``)."""
        if self.phrase_move is None:
            return []
        return [p for i in range(len(hyp.tokens) + 1) for p in self.phrase_move.propose(hyp, i, self.move_context)]

    # ------------------------------------------------------------------ scoring

    def _ended(self, toks: tuple[int, ...]) -> bool:
        return bool(toks) and toks[-1] in self._eos

    def _scorer_rows(self, seqs: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
        assert self.scorer is not None
        return [self.scorer.tokens(t, self._ended(t)) for t in seqs]

    def _scorer_base(self, parent: Hypothesis | None) -> tuple[int, ...]:
        return () if parent is None or self.scorer is None else self.scorer.tokens(parent.tokens, parent.ended)

    def _views(self, items: Sequence[tuple[tuple[int, ...], Scores]], parent: Hypothesis | None = None
               ) -> list[CandidateView]:
        """What the objective sees of each candidate: the generator's tokens and log-probs, or with a scorer
        the scorer's tokens and log-probs (scored here, in one batch; the caller has checked the cost)."""
        if self.scorer is not None:
            seqs = [toks for toks, _ in items]
            rows = self._scorer_rows(seqs)
            lps = self.scorer.logprobs(rows, self._scorer_base(parent))
            return [CandidateView(tokens=row, logprobs=lp, text=self.tokenizer.decode(toks), ended=self._ended(toks))
                    for toks, row, lp in zip(seqs, rows, lps)]
        need_text = self.objective.needs_text
        return [
            CandidateView(
                tokens=toks,
                logprobs=sc.logprobs,
                text=self.tokenizer.decode(toks) if need_text else None,
                ended=self._ended(toks),
            )
            for toks, sc in items
        ]

    def _hypotheses(self, items: Sequence[tuple[tuple[int, ...], Scores]], parent: Hypothesis | None = None
                    ) -> list[Hypothesis]:
        views = self._views(items, parent)
        values, terms = self.objective.evaluate(views)
        n, echo = self.config.repeat_guard, self.config.echo_guard
        out = []
        for (toks, sc), v, t, view in zip(items, values, terms, views):
            text, repeats = view.text, None
            if n is not None or echo is not None:
                text = self.tokenizer.decode(toks) if text is None else text
                # the wrap is asked-for text around the answer: the guards read the answer alone
                answer = unwrap(text, self.config.wrap) if self.config.wrap else None
                repeats = count_repeats(text if answer is None else answer, n, self._prompt_grams, echo or ECHO_N)
            out.append(Hypothesis(tokens=toks, scores=sc, value=float(v), terms=t, text=text, ended=view.ended,
                                  repeats=repeats))
        return out

    def score_initial(self, tokens: Sequence[int]) -> Hypothesis:
        """Score the starting output; sets :attr:`current` and :attr:`initial`.

        An empty output is a start only for a sampler that draws its outputs from the model
        (:attr:`Strategy.from_nothing <refine.strategy.Strategy.from_nothing>`): nothing is scored, the start's
        value is ``-inf`` (any output beats it) and it holds no text for the admissibility rules to keep, so
        the first complete draw the strategy offers is taken whatever it is.
        """
        tokens = tuple(int(t) for t in tokens)
        if not tokens:
            if not self.strategy.from_nothing:
                raise InputError(f"the output is empty; there is nothing to refine (strategy {self.strategy.name!r} "
                                 "edits an output; only the samplers " + ", ".join(repr(n) for n in _from_nothing())
                                 + " start from nothing)")
            hyp = Hypothesis(tokens=(), scores=Scores.empty(1), value=-np.inf, terms={}, text="", ended=False)
            self.current = self.initial = hyp
            return hyp
        cost = self.session.score_cost([tokens])
        if self.scorer is not None:
            (row,) = self._scorer_rows([tokens])
            if not self.scorer.scorable(row):
                raise InputError(f"the scorer cannot score the initial output ({len(row)} tokens in the scorer's "
                                 f"tokens; it takes 1 to {self.scorer.room} after its prompt)")
            cost += self.scorer.cost([row])
        if cost > self.remaining_tokens():
            raise ConfigError(
                f"`budget.max_forward_tokens`={self.budget.max_forward_tokens} cannot even score the initial "
                f"output (needs {cost} tokens); raise it or set it to None"
            )
        ((start, sc),) = self.session.score([tokens])
        assert start == 0
        (hyp,) = self._hypotheses([(tokens, sc)])
        self._count()
        if np.isnan(hyp.value):
            nan = sorted(name for name, v in hyp.terms.items() if isinstance(v, float) and math.isnan(v))
            raise InputError(f"the objective is NaN on the initial output (term(s) {nan or 'unknown'}): a term has "
                             "to return a number for every output")
        self.current = self.initial = hyp
        self._memo[(tokens,)] = hyp
        if self.config.wrap:  # the answer a wrap goes around: half of it has to stay inside
            text = self._text(hyp)
            inner = unwrapped_length(text, self.config.wrap)
            self._min_wrapped = (len(text.strip()) if inner is None else inner) // 2
        return hyp

    def _text(self, hyp: Hypothesis) -> str:
        if hyp.text is not None:
            return hyp.text
        return self.tokenizer.decode([t for t in hyp.tokens if t not in self._eos])

    @property
    def can_fork(self) -> bool:
        """Whether decode proposals may branch off each other (``Proposal.fork``): the session supports it."""
        return self.session.supports_fork

    @staticmethod
    def _requests(props: Sequence[Proposal]) -> tuple[list[Proposal], list[DecodeRequest]]:
        """The decode requests of ``props`` (decode proposals), a branch pointing at its parent's index; a branch
        whose parent is not among ``props`` is left out (it cannot run without it)."""
        index = {p.key: i for i, p in enumerate(props) if p.fork is None}
        kept = [p for p in props if p.fork is None or p.fork[0] in index]
        index = {p.key: i for i, p in enumerate(kept) if p.fork is None}
        reqs = [DecodeRequest(p.tokens, p.max_new, p.min_new, p.force_eos, p.beam, p.temperature, p.seed,
                              None if p.fork is None else (index[p.fork[0]], p.fork[1])) for p in kept]
        return kept, reqs

    def _cost(self, parent: Hypothesis, props: Sequence[Proposal]) -> int:
        """Forward tokens evaluating ``props`` costs at most: the generator's scoring and decoding, and the
        scorer's scoring of the scored proposals (a re-decoded one's text is known only after decoding: its
        scorer cost is checked then, in :meth:`_run`)."""
        scored = [p.tokens for p in props if not p.decode]
        _, decoded = self._requests([p for p in props if p.decode])
        cost = self.session.score_cost(scored, parent.tokens) if scored else 0
        if decoded:
            cost += self.session.decode_cost(decoded, parent.tokens)
        if self.scorer is not None and scored:
            cost += self.scorer.cost(self._scorer_rows(scored), self._scorer_base(parent))
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
        self.stats.steps += 1
        seen: set[tuple] = set()
        fresh: list[Proposal] = []
        results: list[tuple[Proposal, Hypothesis]] = []
        for p in proposals:
            if p.key in seen:
                continue
            seen.add(p.key)
            content = len(p.tokens) - self._ended(p.tokens)
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
                self._cut_by_budget = True
            if not fresh:
                raise BudgetExhausted()
            results.extend(self._run(parent, fresh, prune))
        self.stats.candidates += len(results)
        self._count()
        valid = [(p, h) for p, h in results if self._valid(h)]
        if not admissible_only:
            return valid
        kept = [(p, h) for p, h in valid if self.admissible(h, parent)]
        self.stats.refused += len(valid) - len(kept)
        return kept

    def _valid(self, h: Hypothesis) -> bool:
        content = len(h.tokens) - self._ended(h.tokens)
        return content >= self.config.min_tokens and np.isfinite(h.value)

    def _run(self, parent: Hypothesis, props: Sequence[Proposal], prune: bool = True
             ) -> list[tuple[Proposal, Hypothesis]]:
        scored = [p for p in props if not p.decode]
        decoded = [p for p in props if p.decode]
        items: list[tuple[Proposal, tuple[int, ...], Scores]] = []
        sampled: dict[tuple, np.ndarray] = {}  # proposal key -> log-densities of its sampled tokens
        if scored:
            for p, (start, sc) in zip(scored, self.session.score([p.tokens for p in scored], parent.tokens)):
                items.append((p, p.tokens, Scores.concat([parent.scores.slice(0, start), sc])))
        if decoded:
            decoded, reqs = self._requests(decoded)
            room = self.remaining_tokens()
            # the score call above may have moved the session's cache, so decoding can now cost more than
            # :meth:`_cost` priced it at: the least promising decodes give way until the rest fit (the cap is hard)
            while decoded and room != float("inf") and self.session.decode_cost(reqs, parent.tokens) > room:
                decoded, reqs = self._requests(decoded[:-1])
                self._cut_by_budget = True
            if not decoded and not scored:
                raise BudgetExhausted()
        if decoded:
            limit = None if room == float("inf") else room - self._scorer_reserve(parent, len(decoded))
            if limit is not None:
                limit = max(limit, self.session.decode_cost(reqs, parent.tokens))
            outs = self.session.decode(reqs, parent.tokens, limit, self._pruner(parent) if prune else None)
            for p, (start, dec) in zip(decoded, outs):
                if dec.pruned:
                    self._pruned.add(p.key)
                    self.stats.pruned += 1
                    continue
                if dec.sample_logprobs is not None:
                    sampled[p.key] = dec.sample_logprobs
                items.append((p, dec.tokens, Scores.concat([parent.scores.slice(0, start), dec.scores])))
        if self.scorer is not None:
            items = self._affordable(parent, items)  # may drop and reorder items
        hyps = self._hypotheses([(toks, sc) for _, toks, sc in items], parent)
        hyps = [dataclasses.replace(h, sampled=sampled[p.key]) if p.key in sampled else h
                for (p, _, _), h in zip(items, hyps)]
        out = []
        for (p, _, _), h in zip(items, hyps):
            self._memo[p.key] = h
            out.append((p, h))
        return out

    def _scorer_reserve(self, parent: Hypothesis, rows: int) -> int:
        """What scoring ``rows`` re-decoded candidates with the scorer may cost, estimated as that many copies of
        the parent (0 without a scorer): kept out of the room a generator's decode call may speculate with."""
        if self.scorer is None or rows == 0:
            return 0
        row = self._scorer_base(parent)
        return self.scorer.session.score_cost([row] * rows) if self.scorer.scorable(row) else 0

    def _affordable(self, parent: Hypothesis, items: list) -> list:
        """The candidates whose scoring by the scorer fits the budget, most promising (highest prior) first.

        Re-decoded candidates dropped here were paid for by the generator; they are not tried again. If none
        fits, :class:`BudgetExhausted`.
        """
        assert self.scorer is not None
        items = sorted(items, key=lambda it: -it[0].prior)  # stable: ties keep proposal order
        base = self._scorer_base(parent)
        n = len(items)
        while items and self.scorer.cost(self._scorer_rows([t for _, t, _ in items]), base) > self.remaining_tokens():
            p = items.pop()[0]
            self._pruned.add(p.key)
        if n and not items:
            raise BudgetExhausted()
        return items

    def _pruner(self, parent: Hypothesis):
        """The lookahead test for suffixes re-decoded from ``parent`` (:func:`refine.lookahead.lookahead_pruner`).
        Off when ``prune_margin`` is None, when the objective reads text, and with a scorer (the generator's
        partial scores say nothing about what the scorer will prefer: the lookahead would drop exactly the
        continuations the scorer is there to find)."""
        margin = self.config.prune_margin
        if margin is None or self.objective.needs_text or self.scorer is not None:
            return None
        return lookahead_pruner(self.objective, parent, margin, self.config.prune_keep)

    # ------------------------------------------------------------------ moving

    def admissible(self, cand: Hypothesis, than: Hypothesis) -> bool:
        """Whether ``cand`` may replace ``than`` at all, whatever either scores (the module docstring's rules).

        :meth:`evaluate` returns only candidates admissible against their parent, so a strategy's best
        candidate is never one the guard would throw away; :meth:`accept` checks again against the current
        output (a strategy may evaluate from another parent).
        """
        if than.ended and not cand.ended:
            return False
        if self._min_wrapped:
            inner = unwrapped_length(self._text(cand), self.config.wrap)
            if inner is not None and inner < self._min_wrapped:
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

    # ------------------------------------------------------------------ driving

    def run(self, progress: "ProgressFn | None" = None) -> RefineResult:
        """Drive :attr:`strategy` until it converges or a budget limit is reached (after :meth:`score_initial`).

        The one place the budget's step-level limits are checked (``max_seconds``, ``max_sweeps``,
        ``patience``; ``max_forward_tokens`` is enforced inside :meth:`evaluate`) and the one writer of
        :attr:`stats`, with :meth:`evaluate`, :meth:`accept` and :meth:`end_sweep`. ``max_seconds`` also becomes
        the session's :attr:`~refine.backends.base.Session.deadline`, so a backend that can stops a long call.
        """
        init = self.initial
        assert init is not None, "score_initial() first"
        strategy = self.strategy
        strategy.start(self)
        budget = self.budget
        if budget.max_seconds is not None:
            self.session.deadline = time.monotonic() + max(budget.max_seconds - self.elapsed(), 0.0)
        try:
            stop = self._drive(strategy, progress)
        finally:
            self.session.deadline = None
        best = strategy.result(self)
        self._count()
        self.stats.forward_tokens = self.spent
        self.stats.seconds = self.elapsed()
        self.stats.stop_reason = stop
        decode = self.tokenizer.decode
        return RefineResult(
            tokens=list(best.tokens),
            text=decode(best.tokens),
            score=best.value,
            initial_tokens=list(init.tokens),
            initial_text=decode(init.tokens),
            initial_score=init.value,
            terms=dict(best.terms),
            initial_terms=dict(init.terms),
            edits=list(self.edits),
            stats=self.stats,
            prompt_tokens=list(self.session.prompt),
            ended=best.ended,
            initial_ended=init.ended,
            extras=strategy.extras(self),
        )

    def _drive(self, strategy: Strategy, progress: "ProgressFn | None") -> str:
        """Steps of ``strategy`` until it stops or a limit binds; returns the stop reason."""
        budget = self.budget
        idle = 0
        stop = "converged"
        while True:
            if self.out_of_time():
                stop = "max_seconds"
                break
            if self.stats.sweeps >= budget.max_sweeps:
                stop = "max_sweeps"
                break
            if budget.patience is not None and idle >= budget.patience:
                stop = "patience"
                break
            accepted, steps = self.stats.accepted, self.stats.steps
            try:
                more = strategy.step(self)
            except BudgetExhausted as exc:
                stop = exc.stop_reason
                break
            if self.stats.accepted > accepted:
                idle = 0
            else:
                idle += self.stats.steps - steps
            if progress is not None:
                progress(self)
            if not more:
                if self._cut_by_budget:  # proposals were left out for want of budget: not converged
                    stop = BudgetExhausted.stop_reason
                elif self.out_of_time():  # the last step ended early for want of time: not converged either
                    stop = "max_seconds"
                break
        return stop


ProgressFn = Callable[["Search"], None]


def run_search(
    session: Session,
    tokenizer: TokenizerView,
    output: Sequence[int],
    config: RefineConfig,
    max_output_tokens: int,
    progress: ProgressFn | None = None,
    scorer: Scorer | None = None,
) -> RefineResult:
    """Refine ``output`` for ``session.prompt`` with ``config``; return what the strategy returns (the best
    output found, unless a sampler was asked for its sample).

    ``scorer``: a second model that computes the objective (:mod:`refine.scorer`); None: the generator's scores.
    """
    search = Search(session, tokenizer, config, max_output_tokens, scorer)
    search.score_initial(output)
    return search.run(progress)
