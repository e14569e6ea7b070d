"""One prompt's scoring and decoding state on a Hugging Face model.

The session keeps one batch-1 KV cache of ``prompt + shared output prefix`` (minus its
last token). A call crops or extends that cache to its shared prefix (forwarding only
the tokens not cached yet), copies it across the batch and forwards only the differing
suffixes. A row that continues a prefix of the call's ``base`` first walks along it: one
forward of ``base`` gives the next-token distribution at each of its positions, and the row
draws from those until its tokens leave ``base`` (:mod:`~refine.backends.hf.walk`). Log-softmax is
taken in fp32. The caller's tensors and caches are never touched.

Decoding itself is in its own modules, mixed into :class:`HFSession`: :mod:`~refine.backends.hf.choice` (a row's
next token), :mod:`~refine.backends.hf.drafts` (greedy and sampled rows), :mod:`~refine.backends.hf.beam` (beam
rows) and :mod:`~refine.backends.hf.gradients` (the gradient capability).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ...errors import DeadlineReached, InputError, require
from ...types import Scores
from ..base import Decoded, GradientSession, PruneFn, Session
from ..prefix import common_prefix
from .beam import BeamDecoding
from .choice import TokenChoice
from .drafts import DraftedDecoding
from .gradients import HFGradients
from .walk import BaseWalk

if TYPE_CHECKING:
    from .backend import HFBackend

torch = require("torch", "torch==2.13.0")
transformers = require("transformers", "transformers")


class HFSession(BaseWalk, TokenChoice, DraftedDecoding, BeamDecoding, HFGradients, Session,
                GradientSession):
    """One prompt's scoring/decoding state. See the module docstring for the caching scheme.

    It also has the :class:`~refine.backends.base.GradientSession` capability (gradient-guided strategies), and
    its :meth:`decode` takes ``fork`` requests: a branch copies its parent's cache row when the parent reaches
    the branch point.
    """

    supports_fork = True
    supports_banned = True

    def __init__(self, backend: HFBackend, prompt: Sequence[int], topk: int, max_batch_tokens: int) -> None:
        if len(prompt) == 0:
            raise InputError("the prompt is empty; refine needs at least one prompt token to condition on")
        self.backend = backend
        self.model = backend.model
        self.prompt = tuple(int(t) for t in prompt)
        self.topk = min(int(topk), backend.tokenizer.vocab_size)  # a vocabulary smaller than ``topk`` has no more
        self.max_batch_tokens = int(max_batch_tokens)
        self.forward_tokens = 0
        self.forward_calls = 0
        self._cache = None  # DynamicCache of self._cached (batch 1)
        self._cached: list[int] = []
        self._eos = torch.tensor(backend.tokenizer.eos_ids, device=backend.device)

    # ------------------------------------------------------------------ the context cache

    def _check_deadline(self) -> None:
        """Stop a decoding call between two steps once :attr:`deadline` has passed."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineReached()

    def _count(self, tokens: int) -> None:
        """Count one model call over ``tokens`` fed columns (a forward, or a backward of the gradient capability):
        every call the session makes is counted here."""
        self.forward_tokens += int(tokens)
        self.forward_calls += 1

    def _forward(self, input_ids, cache, **kw):
        self._count(input_ids.numel())
        with torch.no_grad():
            return self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, **kw)

    def _ensure_cost(self, ctx: Sequence[int]) -> int:
        """Tokens :meth:`_ensure` would forward to cache ``ctx``."""
        return len(ctx) - common_prefix(self._cached, ctx)

    def _ensure(self, ctx: Sequence[int]) -> None:
        """Make the batch-1 cache hold exactly ``ctx`` (crop to the common prefix, forward the rest)."""
        keep = common_prefix(self._cached, ctx)
        if self._cache is None or keep == 0:
            # a fresh cache: an emptied one keeps a stale batch shape that batch_repeat_interleave skips
            self._cache = transformers.DynamicCache(config=self.model.config)
            self._cached = []
        elif keep < len(self._cached):
            self._cache.crop(-(len(self._cached) - keep))
            self._cached = self._cached[:keep]
        rest = list(ctx[keep:])
        if rest:
            self._extend(rest, logits_to_keep=1)

    def _extend(self, tokens: Sequence[int], logits_to_keep: int | None = None):
        """Forward ``tokens`` after the cached context, growing the cache by them, in calls of at most
        ``max_batch_tokens`` tokens; returns the model's output with the logits of every token fed (of the last
        ``logits_to_keep`` only, when given)."""
        tokens = list(tokens)
        step = max(self.max_batch_tokens, 1)
        parts = []
        for a in range(0, len(tokens), step):
            chunk = tokens[a : a + step]
            last = a + step >= len(tokens)
            kw = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep if last else 1}
            res = self._forward(torch.tensor([chunk], device=self.backend.device), self._cache, **kw)
            self._cached += chunk
            if logits_to_keep is None:
                parts.append(res.logits)
        if len(parts) > 1:
            res.logits = torch.cat(parts, dim=1)
        return res

    def _fork(self, rows: int, length: int):
        """A copy of the first ``length`` cached tokens, repeated ``rows`` times (the session's cache is kept)."""
        if length == 0:
            return transformers.DynamicCache(config=self.model.config)
        cache = copy.deepcopy(self._cache)
        if length < len(self._cached):
            cache.crop(-(len(self._cached) - length))
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    # ------------------------------------------------------------------ distributions

    def _summaries(self, logits, targets=None):
        """fp32 log-softmax of ``logits (N, V)`` -> (logp, target logprobs, topk ids, topk logprobs, entropy)."""
        logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
        idx = self._banned_index()
        if idx is None:
            top_lp, top_id = torch.topk(logp, self.topk, dim=-1)  # (N, K)
        else:  # the alternatives reported are the allowed ones (their log-probs the model's own)
            top_lp, top_id = torch.topk(logp.index_fill(-1, idx, -float("inf")), self.topk, dim=-1)
        ent = -(logp.exp() * logp).sum(-1)  # (N,)
        tgt = None if targets is None else logp.gather(-1, targets[:, None])[:, 0]
        return logp, tgt, top_id, top_lp, ent

    def _target_scores(self, logits, targets) -> Scores:
        """:class:`Scores` of ``targets (N,)``, one per row of ``logits (N, V)``."""
        _, lp, tid, tlp, ent = self._summaries(logits, targets)
        return Scores(lp.double().cpu().numpy(), tid.cpu().numpy(), tlp.double().cpu().numpy(),
                      ent.double().cpu().numpy())

    # ------------------------------------------------------------------ batch layout

    def _layout(self, rows: Sequence[tuple[int, ...]], base: Sequence[int], decode: bool):
        """Per row: ``start`` (first scored position), visible cached length ``L`` and fed tokens.

        Row r sees the first ``L_r`` tokens of the cached chain ``prompt + base`` (a prefix common to all rows)
        and feeds ``fed_r``: the last context token, then the row's own tokens (score: all but the last one,
        whose distribution is read at the previous column; decode: all of them, the last column predicting the
        first generated token).
        """
        n = len(self.prompt)
        starts, lens, feds = [], [], []
        for row in rows:
            cap = len(row) - 1 if (row or not decode) else 0
            s = min(common_prefix(row, base), max(cap, 0))
            full = self.prompt + tuple(row)
            end = n + len(row) if decode else n + len(row) - 1
            starts.append(s)
            lens.append(n + s - 1)
            feds.append(full[n + s - 1 : end])
        chain = (self.prompt + tuple(base))[: max(lens)] if rows else ()
        return starts, lens, feds, list(chain)

    def _batch(self, lens, feds, left_pad: bool):
        """Input ids, attention mask and position ids for rows of fed tokens over a cache of ``max(lens)``."""
        dev = self.backend.device
        B, W, Lmax = len(feds), max(len(f) for f in feds), max(lens)
        inp = torch.full((B, W), self.backend.tokenizer.eos, dtype=torch.long, device=dev)
        mask = torch.zeros((B, Lmax + W), dtype=torch.long, device=dev)
        pos = torch.zeros((B, W), dtype=torch.long, device=dev)
        cols = []
        for r, (L, fed) in enumerate(zip(lens, feds)):
            c0 = W - len(fed) if left_pad else 0
            inp[r, c0 : c0 + len(fed)] = torch.tensor(fed, device=dev)
            mask[r, :L] = 1
            mask[r, Lmax + c0 : Lmax + c0 + len(fed)] = 1
            pos[r, :] = L  # pads: any position, they are masked
            pos[r, c0 : c0 + len(fed)] = torch.arange(L, L + len(fed), device=dev)
            cols.append(c0)
        needs_mask = left_pad or any(L != Lmax for L in lens)
        return inp, (mask if needs_mask else None), (pos if needs_mask else None), cols

    def _chunks(self, widths: Sequence[int]) -> list[tuple[int, int]]:
        """Consecutive row ranges whose rows x width stays within ``max_batch_tokens``."""
        out, a, w = [], 0, 0
        for b, width in enumerate(widths):
            w = max(w, width)
            if b > a and (b - a + 1) * w > self.max_batch_tokens:
                out.append((a, b))
                a, w = b, width
        if widths:
            out.append((a, len(widths)))
        return out

    #: the fixed cost of one forward call, in forward tokens' worth of compute: on a CPU a small batch is
    #: bound by reading the weights (measured here for a 135M model: one token ~100 ms, each further token of
    #: a batch ~5 ms, so ~30 tokens). Drafts are fed only while their expected accepted tokens pay for their
    #: columns, and scoring splits rows into chunks only where the padding saved pays for the extra call.
    call_overhead_tokens = 32

    # ------------------------------------------------------------------ scoring

    @staticmethod
    def _by_width(feds) -> list[int]:
        """Row order for chunking: widest first, so rows of similar width share a chunk (less padding)."""
        return sorted(range(len(feds)), key=lambda r: -len(feds[r]))

    def _partition(self, widths: Sequence[int]) -> list[tuple[int, int]]:
        """Chunks of rows sorted by decreasing width that minimise padded tokens plus per-call overhead.

        A chunk ``[a, b)`` costs ``(b - a) * widths[a] + call_overhead_tokens`` and may hold at most
        ``max_batch_tokens``; an exact dynamic programme over the split points (one row's width above the cap
        still gets a chunk of its own).
        """
        n = len(widths)
        if n == 0:
            return []
        inf = float("inf")
        best = [0.0] + [inf] * n
        cut = [0] * (n + 1)
        for a in range(n):
            if best[a] == inf:
                continue
            fit = max(1, self.max_batch_tokens // max(widths[a], 1))
            for b in range(a + 1, min(n, a + fit) + 1):
                c = best[a] + (b - a) * widths[a] + self.call_overhead_tokens
                if c < best[b]:
                    best[b], cut[b] = c, a
        out, b = [], n
        while b > 0:
            out.append((cut[b], b))
            b = cut[b]
        return out[::-1]

    def score_cost(self, seqs, base=()):
        starts, lens, feds, chain = self._layout([tuple(s) for s in seqs], tuple(base), decode=False)
        widths = [len(feds[r]) for r in self._by_width(feds)]
        return self._ensure_cost(chain) + sum((b - a) * widths[a] for a, b in self._partition(widths))

    def score(self, seqs, base=()):
        seqs = [tuple(int(t) for t in s) for s in seqs]
        if any(len(s) == 0 for s in seqs):
            raise ValueError("score(): empty sequence")
        starts, lens, feds, chain = self._layout(seqs, tuple(base), decode=False)
        self._ensure(chain)
        order = self._by_width(feds)
        out: list[tuple[int, Scores] | None] = [None] * len(seqs)
        for a, b in self._partition([len(feds[r]) for r in order]):
            rows = order[a:b]
            inp, mask, pos, _ = self._batch([lens[r] for r in rows], [feds[r] for r in rows], left_pad=False)
            B, W = inp.shape
            kw = {} if mask is None else {"attention_mask": mask, "position_ids": pos}
            logits = self._forward(inp, self._fork(B, max(lens[r] for r in rows)), **kw).logits  # (B, W, V)
            # distributions only where a target is scored: row j's first len(fed) columns (no padding)
            ks = [len(seqs[r]) - starts[r] for r in rows]
            keep = torch.tensor([j * W + c for j, k in enumerate(ks) for c in range(k)], device=logits.device)
            tgt = torch.tensor([t for r in rows for t in seqs[r][starts[r]:]], device=logits.device)
            sc = self._target_scores(logits.reshape(B * W, -1).index_select(0, keep), tgt)
            o = 0
            for r, k in zip(rows, ks):
                out[r] = (starts[r], sc.slice(o, o + k))
                o += k
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ greedy decoding

    @staticmethod
    def _groups(requests) -> list[list[int]]:
        """Request indices split by how they decode: greedy or sampled rows together, beam rows apart (``fork``
        requests are left out: they join their parent's chunk)."""
        plain = [i for i, r in enumerate(requests) if r.beam == 1 and r.fork is None]
        beams = [i for i, r in enumerate(requests) if r.beam > 1]
        return [g for g in (plain, beams) if g]

    def _plan(self, requests, feds) -> list[tuple[list[int], int]]:
        """Chunks of request indices, each with its plain worst-case cost (no drafts): a beam request counts
        ``beam`` rows after its first step; a ``fork`` request is in its parent's chunk (after the others) and
        costs one row per step after its first own token."""
        out = []
        for group in self._groups(requests):
            widths = [len(feds[i]) * requests[i].beam for i in group]
            for a, b in self._chunks(widths):
                idx = group[a:b]
                first = len(idx) * max(len(feds[i]) for i in idx)
                out.append((idx, first + sum(requests[i].beam * max(requests[i].max_new - 1, 0) for i in idx)))
        home = {i: k for k, (idx, _) in enumerate(out) for i in idx}
        for i, r in enumerate(requests):
            if r.fork is not None:
                idx, cost = out[home[r.fork[0]]]
                out[home[r.fork[0]]] = (idx + [i], cost + max(r.max_new - r.fork[1] - 1, 0))
        return out

    @staticmethod
    def _check_forks(requests) -> None:
        for i, r in enumerate(requests):
            if r.fork is None:
                continue
            parent = r.fork[0]
            if parent >= len(requests) or requests[parent].fork is not None or requests[parent].beam > 1:
                raise ValueError(f"request {i}: `fork` needs the index of a plain (not beam, not fork) request of "
                                 f"the same call, but names {parent}")
            if tuple(requests[parent].tokens) != tuple(r.tokens):
                raise ValueError(f"request {i}: a `fork` request has its parent's tokens")

    def decode_cost(self, requests, base=()):
        self._check_forks(requests)
        base = tuple(base)
        starts, lens, feds, chain = self._layout([tuple(r.tokens) for r in requests], base, decode=True)
        plan = sum(cost for _, cost in self._plan(requests, feds))
        cost = self._ensure_cost(chain) + plan
        lo = self._walk_from(requests, base)
        if lo is not None:  # the walk's forward along `base` may cost more than caching `chain` would
            # (+1 per request: a walked row's first forward may feed one token more than it would have)
            first = max(lo - 1, 0)
            cost = max(cost, self._ensure_cost(self._base_chain(base, first)) + len(base) - first + 1 + plan
                       + len(requests))
        return cost

    #: generated tokens between two calls of the ``prune`` callback for a row
    prune_every = 4

    def decode(self, requests, base=(), limit=None, prune: PruneFn | None = None):
        requests = list(requests)
        self._check_forks(requests)
        base = tuple(base)
        call0 = self.forward_tokens
        out: list[tuple[int, Decoded] | None] = [None] * len(requests)
        # request -> (its plain start, scores of its walked tokens before decoding's start, log q of its sampled
        # walked tokens, its generator)
        walked: dict[int, tuple[int, Scores, list[float], Any]] = {}
        lo = None if prune is not None else self._walk_from(requests, base)
        if lo is not None:
            requests, walked = self._walk(requests, base, lo, out)
        live = [i for i in range(len(requests)) if out[i] is None]  # not finished on a walk
        if not live:
            return out  # type: ignore[return-value]
        # the requests still to decode, a fork's parent index counted among them
        sub = [requests[i] if requests[i].fork is None else
               dataclasses.replace(requests[i], fork=(live.index(requests[i].fork[0]), requests[i].fork[1]))
               for i in live]
        starts, lens, feds, chain = self._layout([tuple(r.tokens) for r in sub], base, decode=True)
        self._ensure(chain)
        plan = self._plan(sub, feds)
        for k, (idx, _) in enumerate(plan):
            # drafting may spend what the plain worst case of the later chunks leaves of `limit`
            room = None if limit is None else limit - (self.forward_tokens - call0) - sum(c for _, c in plan[k + 1:])
            reqs = [sub[i] for i in idx]
            rows = reqs, [starts[i] for i in idx], [lens[i] for i in idx], [feds[i] for i in idx]
            row_prune = None if prune is None else (lambda r, *x, idx=idx: prune(live[idx[r]], *x))
            if reqs[0].beam > 1:
                decs = self._beam_chunk(*rows, row_prune)
            else:
                forks = {j: (idx.index(r.fork[0]), r.fork[1]) for j, r in enumerate(reqs) if r.fork is not None}
                gens = {j: walked[live[i]][3] for j, i in enumerate(idx) if live[i] in walked}
                decs = self._decode_chunk(*rows, base, room, row_prune, forks, gens)
            for i, dec in zip(idx, decs):
                start = starts[i]
                if live[i] in walked:  # report it as plain decoding would: from its own start, every density
                    start, head, lq, _ = walked[live[i]]
                    dec = dataclasses.replace(dec, scores=Scores.concat([head, dec.scores]))
                    if dec.sample_logprobs is not None:
                        dec = dataclasses.replace(dec, sample_logprobs=np.concatenate(
                            [np.asarray(lq, dtype=np.float64), dec.sample_logprobs]))
                out[live[i]] = (start, dec)
        return out  # type: ignore[return-value]


    def _scores(self, rows: list[tuple]) -> Scores:
        k = self.topk
        return Scores(
            np.asarray([x[0] for x in rows], dtype=np.float64),
            np.asarray([x[1] for x in rows], dtype=np.int64).reshape(-1, k),
            np.asarray([x[2] for x in rows], dtype=np.float64).reshape(-1, k),
            np.asarray([x[3] for x in rows], dtype=np.float64),
        )

    def close(self) -> None:
        self._cache = None
        self._cached = []
