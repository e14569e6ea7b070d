"""Hugging Face transformers backend: batched, KV-cached scoring and re-decoding (greedy, beam or sampled).

The session keeps one batch-1 KV cache of ``prompt + shared output prefix`` (minus its
last token). A call crops or extends that cache to its shared prefix (forwarding only
the tokens not cached yet), copies it across the batch and forwards only the differing
suffixes. A row that continues a prefix of the call's ``base`` first walks along it: one
forward of ``base`` gives the next-token distribution at each of its positions, and the row
draws from those until its tokens leave ``base`` (:meth:`HFSession._walk`). Log-softmax is
taken in fp32. The caller's tensors and caches are never touched.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DeadlineReached, InputError, require
from .prefix import common_prefix
from .sampling import inverse_cdf
from ..types import Scores
from .base import (Backend, DecodeRequest, Decoded, GradientSession, PruneFn, Session, TokenGradients,
                   TokenizerView)

torch = require("torch", "torch==2.13.0")
transformers = require("transformers", "transformers")


def tokenizer_view(tokenizer: Any, vocab_size: int, extra_eos: Sequence[int] = ()) -> TokenizerView:
    """Describe an HF tokenizer as a :class:`TokenizerView` for a model with ``vocab_size`` output rows."""
    eos: list[int] = []
    for t in [tokenizer.eos_token_id, *extra_eos]:
        for tid in t if isinstance(t, (list, tuple)) else [t]:
            if tid is not None and int(tid) not in eos:
                eos.append(int(tid))
    if not eos:
        raise InputError("the tokenizer defines no EOS token (`tokenizer.eos_token_id` is None); set one")
    specials = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    def token_str(i: int) -> str:
        return tokenizer.decode([int(i)], skip_special_tokens=False)

    return TokenizerView(vocab_size, tuple(eos), specials, decode, encode, token_str)


def conversation_ids(tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                     **template_kwargs: Any) -> list[int]:
    """Token ids of a chat conversation through the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None) and template_kwargs.get("chat_template") is None:
        raise InputError("the tokenizer has no chat template; pass `chat_template=` or use a plain prompt")
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=True,
                                        **template_kwargs)
    if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def prompt_ids(tokenizer: Any, prompt: str, chat: bool | None) -> list[int]:
    """Token ids of a user prompt: through the chat template when ``chat`` is true, or None and one exists."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat or (chat is None and has_template):
        if not has_template:
            raise InputError("`chat=True` but the tokenizer has no chat template")
        return conversation_ids(tokenizer, [{"role": "user", "content": prompt}])
    return [int(i) for i in tokenizer.encode(prompt, add_special_tokens=True)]


def _generation_eos(model: Any) -> list[int]:
    gc = getattr(model, "generation_config", None)
    e = getattr(gc, "eos_token_id", None) if gc is not None else None
    if e is None:
        return []
    return [int(x) for x in (e if isinstance(e, (list, tuple)) else [e])]


class HFBackend(Backend):
    """Scores and decodes with a causal LM from transformers.

    Args:
        model: a decoder-only ``PreTrainedModel`` (encoder-decoder models are refused).
        tokenizer: its tokenizer; it must fit the model's vocabulary.

    Example:
        >>> from refine.backends.hf import HFBackend          # doctest: +SKIP
        >>> backend = HFBackend(model, tokenizer)              # doctest: +SKIP
        >>> session = backend.open(prompt_ids, topk=16, max_batch_tokens=2048)  # doctest: +SKIP
    """

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "forward"):
            raise InputError(f"`model` has to be a transformers PreTrainedModel, but is {type(model).__name__}")
        if getattr(config, "is_encoder_decoder", False):
            raise InputError(
                f"{type(model).__name__} is an encoder-decoder model; refine supports decoder-only causal LMs"
            )
        vocab = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None \
            else int(config.vocab_size)
        n_tok = len(tokenizer)
        if n_tok > vocab:
            raise InputError(
                f"the tokenizer has {n_tok} tokens but the model's output layer only {vocab}: "
                "they do not belong together (load both from the same folder)"
            )
        self.model = model
        self.hf_tokenizer = tokenizer
        self.tokenizer = tokenizer_view(tokenizer, vocab, _generation_eos(model))
        bad = [i for i in self.tokenizer.eos_ids if i >= vocab]
        if bad:
            raise InputError(f"EOS id(s) {bad} are outside the model's vocabulary of {vocab}: tokenizer mismatch")
        self.max_length = int(
            getattr(config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
        )
        self.device = next(model.parameters()).device

    def encode_prompt(self, prompt: str, chat: bool | None) -> list[int]:
        return prompt_ids(self.hf_tokenizer, prompt, chat)

    def open(self, prompt: Sequence[int], topk: int, max_batch_tokens: int) -> "HFSession":
        return HFSession(self, prompt, topk, max_batch_tokens)


class HFSession(Session, GradientSession):
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
        self.topk = int(topk)
        self.max_batch_tokens = int(max_batch_tokens)
        self.forward_tokens = 0
        self.forward_calls = 0
        self.drafted_tokens = 0  # draft tokens fed for verification
        self.accepted_draft_tokens = 0  # of which greedy decoding agreed with
        self._cache = None  # DynamicCache of self._cached (batch 1)
        self._cached: list[int] = []
        self._eos = torch.tensor(backend.tokenizer.eos_ids, device=backend.device)
        self._banned_for: frozenset[int] | None = None  # the `banned` set `_banned_idx` was built from
        self._banned_idx = None

    # ------------------------------------------------------------------ the context cache

    def _check_deadline(self) -> None:
        """Stop a decoding call between two steps once :attr:`deadline` has passed."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineReached()

    def _forward(self, input_ids, cache, **kw):
        self.forward_tokens += int(input_ids.numel())
        self.forward_calls += 1
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
            ids = torch.tensor([rest], device=self.backend.device)
            self._forward(ids, self._cache, logits_to_keep=1)
            self._cached += rest

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

    # ------------------------------------------------------------------ walking along the base

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
        res = self._forward(torch.tensor([fed], device=self.backend.device), self._cache)
        self._cached += fed  # the cache now holds prompt + base
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

    def _allowed(self, logp, n_new: int, req: DecodeRequest):
        """One step's log-probs ``(V,)`` under the request's length rules (EOS masked before ``min_new``), or
        None where the rules force EOS."""
        eos_ids = self.backend.tokenizer.eos_ids
        if req.force_eos and n_new == req.max_new - 1:
            return None
        idx = self._banned_index()
        if idx is not None:
            logp = logp.index_fill(-1, idx, -float("inf"))
        if n_new < req.min_new:
            logp = logp.clone() if idx is None else logp
            logp[list(eos_ids)] = -float("inf")
        return logp

    def _banned_index(self):
        """:attr:`banned` as an index tensor (built once per set), or None when nothing is banned."""
        if not self.banned:
            return None
        if self._banned_for is not self.banned:
            self._banned_idx = torch.tensor(sorted(self.banned), dtype=torch.long, device=self.backend.device)
            self._banned_for = self.banned
        return self._banned_idx

    def _greedy(self, logp, n_new: int, req: DecodeRequest) -> int:
        """The greedy choice from one step's log-probs under the request's length rules."""
        allowed = self._allowed(logp, n_new, req)
        return self.backend.tokenizer.eos_ids[0] if allowed is None else int(allowed.argmax())

    def _sample(self, logp, n_new: int, req: DecodeRequest, gen) -> tuple[int, float]:
        """A token drawn from ``softmax(logp / temperature)`` under the length rules, and its log-probability
        under that distribution (a forced EOS: 0)."""
        allowed = self._allowed(logp, n_new, req)
        if allowed is None:
            return self.backend.tokenizer.eos_ids[0], 0.0
        q = torch.log_softmax(allowed.double() / req.temperature, -1)  # (V,)
        t = inverse_cdf(q.exp(), gen)
        return t, float(q[t])

    #: the fixed cost of one forward call, in forward tokens' worth of compute: on a CPU a small batch is
    #: bound by reading the weights (measured here for a 135M model: one token ~100 ms, each further token of
    #: a batch ~5 ms, so ~30 tokens). Drafts are fed only while their expected accepted tokens pay for their
    #: columns, and scoring splits rows into chunks only where the padding saved pays for the extra call.
    call_overhead_tokens = 32

    def _width(self, drafts: Sequence[Sequence[int]], rates: Sequence[float]) -> int:
        """The batch width (1 + draft columns) that maximises expected tokens gained per unit of call cost.

        A row with a draft of ``d`` tokens and acceptance rate ``q`` gains ``1 + q + q^2 + ... + q^min(d, w-1)``
        tokens at width ``w`` (a draft token counts only if all before it were accepted); a call costs
        ``call_overhead_tokens + rows * w``. Rows without drafts cost their padding columns too.
        """
        longest = max((len(d) for d in drafts), default=0)
        if longest == 0:
            return 1
        rows = len(drafts)
        best_w, best = 1, rows / (self.call_overhead_tokens + rows)
        for w in range(2, longest + 2):
            gain = 0.0
            for d, q in zip(drafts, rates):
                n = min(len(d), w - 1)
                gain += 1.0 + (q * (1 - q**n) / (1 - q) if q < 1 else float(n))
            value = gain / (self.call_overhead_tokens + rows * w)
            if value > best:
                best_w, best = w, value
        return best_w

    @staticmethod
    def _draft(row: Sequence[int], base: Sequence[int], edit: int, size: int) -> list[int]:
        """Tokens of ``base`` the greedy continuation of ``row`` is likely to repeat (checked, never trusted).

        In step with ``base`` (same index, same token) the rest of ``base`` follows; otherwise the tokens after
        the last occurrence in ``base`` (past the edit) of the row's last two tokens.
        """
        k = len(row) - 1
        if edit < k < len(base) and row[k] == base[k]:
            return list(base[k + 1 : k + 1 + size])
        if len(row) >= 2:
            a, b = row[-2], row[-1]
            for j in range(len(base) - 1, max(edit, 0), -1):
                if base[j] == b and base[j - 1] == a:
                    return list(base[j + 1 : j + 1 + size])
        return []

    def _decode_chunk(self, reqs, starts, lens, feds, base, room, prune, forks=None, gens=None) -> list[Decoded]:
        """Greedy or sampled decoding of one chunk of rows, verifying drafts from ``base`` to take several tokens
        per step.

        Exact: at each column the row chooses its token as it would without drafts, given everything before it
        (greedy: the argmax; sampled: a draw from ``softmax(logp / temperature)`` with the row's generator), and
        a drafted token is kept only if it is that choice; the first choice that differs is the row's next token
        and ends the row's columns. A sampled row thus makes the same draws, in the same order, from the same
        distributions as without drafts (a draft token d survives with probability q(d)), and the output equals
        plain decoding; only the number of sequential forward calls changes. Drafting is skipped whenever it
        could push the chunk past ``room`` forward tokens. Rows that ``prune`` rejects stop.

        ``forks`` maps a branch row to ``(parent row, keep)`` (see ``DecodeRequest.fork``): the branch is not in
        the first forward; when its parent has generated ``keep`` tokens, it draws its own next token from the
        parent's distribution there (the column of the parent's call that predicts that token) and joins the
        batch with a copy of the parent's cache row, its mask hiding the parent's columns after that one (draft
        tokens the branch does not share). Rows of a fork family are never pruned.
        """
        dev = self.backend.device
        eos_ids = self.backend.tokenizer.eos_ids
        B = len(reqs)
        forks = forks or {}
        spent0 = self.forward_tokens
        roots = [r for r in range(B) if r not in forks]
        pending: dict[int, list[int]] = {}  # parent row -> its branches not yet spawned
        for ch, (par, _) in sorted(forks.items()):
            pending.setdefault(par, []).append(ch)
        family = set(forks) | set(pending)
        inp, mask, pos, root_cols = self._batch([lens[r] for r in roots], [feds[r] for r in roots], left_pad=True)
        W = inp.shape[1]
        res = self._forward(inp, self._fork(len(roots), max(lens[r] for r in roots)), attention_mask=mask,
                            position_ids=pos)
        cache, logits = res.past_key_values, res.logits  # (roots, W, V)

        rec: list[list[tuple]] = [[] for _ in range(B)]  # per row: (logprob, topk ids, topk logprobs, entropy)
        toks: list[list[int]] = [list(r.tokens) for r in reqs]

        def record(r: int, col_logits, targets: Sequence[int]) -> None:
            _, lp, tid, tlp, ent = self._summaries(col_logits, torch.tensor(targets, device=dev))
            lp, tid, tlp, ent = lp.double().tolist(), tid.cpu().numpy(), tlp.double().cpu().numpy(), ent.tolist()
            rec[r] += [(lp[j], tid[j], tlp[j], ent[j]) for j in range(len(targets))]

        # scores of the forced tokens (request tokens from `start` on): fed columns c0 .. W-2 (a branch copies
        # its parent's records when it spawns)
        for j, r in enumerate(roots):
            forced = list(reqs[r].tokens[starts[r]:])
            if forced:
                record(r, logits[j, root_cols[j] : W - 1], forced)

        # sampled rows: a generator per row (seeded by its request) and the log-density of each drawn token
        given = gens or {}  # row -> a generator already drawn from (a walked request's)
        gens = [given[j] if j in given else torch.Generator().manual_seed(int(r.seed)) if r.sampled else None
                for j, r in enumerate(reqs)]
        drawn: list[list[float]] = [[] for _ in range(B)]

        def choose(r: int, logp, n: int) -> int:
            if gens[r] is None:
                return self._greedy(logp, n, reqs[r])
            t, lq = self._sample(logp, n, reqs[r], gens[r])
            drawn[r].append(lq)
            return t

        n_new = [0] * B
        hits = [[1.0, 2.0] for _ in range(B)]  # per row: accepted + 1, drafted + 2 (Laplace estimate)
        pruned: set[int] = set()
        checked = [0] * B  # n_new at the last prune checkpoint
        edit = [len(r.tokens) - 1 for r in reqs]
        dsize = [8] * B
        alive, rows_kept = [], []
        for j, r in enumerate(roots):  # first generated token, from the last column
            req = reqs[r]
            if req.max_new > 0:
                t = choose(r, torch.log_softmax(logits[j, -1].float(), -1), 0)
                record(r, logits[j, -1:], [t])
                toks[r].append(t)
                n_new[r] = 1
                if t not in eos_ids and req.max_new > 1:
                    alive.append(r)
                    rows_kept.append(j)
        keep = torch.tensor(rows_kept, device=dev, dtype=torch.long)
        cache.batch_select_indices(keep)
        mask, cur = mask[keep], pos[keep, -1] + 1  # cur: position of each row's next fed token
        spawned: set[int] = set()

        def spawn(r: int, j: int, col: int, new: list[int], logp) -> list[tuple[int, int, int, int]]:
            """Branch off row ``r`` (batch row ``j``, at column ``col`` of this call, after this call's accepted
            tokens ``new``) the branches that keep its ``n_new[r]`` tokens; returns ``(branch, j, col, position of
            its next fed token)`` for those that go on decoding."""
            out = []
            for ch in [c for c in pending.get(r, []) if forks[c][1] == n_new[r]]:
                pending[r].remove(ch)
                spawned.add(ch)
                toks[ch], rec[ch] = list(toks[r]) + new, list(rec[r])
                if new:
                    record(ch, logits[j, :col], new)
                t = choose(ch, logp, n_new[r])
                record(ch, logits[j, col : col + 1], [t])
                toks[ch].append(t)
                n_new[ch] = n_new[r] + 1
                if t not in eos_ids and n_new[ch] < reqs[ch].max_new:
                    out.append((ch, j, col, int(cur[j]) + col + 1))
            return out

        while alive:
            self._check_deadline()
            # 1. drafts, if the worst case stays within `room`
            drafts = []
            for r in alive:
                left = reqs[r].max_new - n_new[r] - 1 - (1 if reqs[r].force_eos else 0)
                drafts.append(self._draft(toks[r], base, edit[r], min(dsize[r], max(left, 0))))
            width = self._width(drafts, [hits[r][0] / hits[r][1] for r in alive])
            drafts = [d[: width - 1] for d in drafts]
            if room is not None and width > 1:
                plain_rest = sum(reqs[r].max_new - n_new[r] - 1 for r in alive)
                plain_rest += sum(reqs[c].max_new - forks[c][1] - 1 for kids in pending.values() for c in kids)
                if (self.forward_tokens - spent0) + len(alive) * width + plain_rest > room:
                    drafts, width = [[] for _ in alive], 1
            # 2. one forward: each row feeds its last token and its draft; pads are masked
            A = len(alive)
            inp = torch.full((A, width), eos_ids[0], dtype=torch.long, device=dev)
            new_mask = torch.zeros((A, width), dtype=mask.dtype, device=dev)
            for j, (r, d) in enumerate(zip(alive, drafts)):
                inp[j, : 1 + len(d)] = torch.tensor([toks[r][-1], *d], device=dev)
                new_mask[j, : 1 + len(d)] = 1
            mask = torch.cat([mask, new_mask], dim=1)
            step_pos = cur[:, None] + torch.arange(width, device=dev)[None, :]
            res = self._forward(inp, cache, attention_mask=mask, position_ids=step_pos)
            cache, logits = res.past_key_values, res.logits  # (A, width, V)
            # 3. accept the drafted tokens decoding would have chosen, then the first choice that differs
            still, joining = [], []
            for j, (r, d) in enumerate(zip(alive, drafts)):
                logp = torch.log_softmax(logits[j].float(), -1)  # (width, V)
                new: list[int] = []
                for c in range(len(d) + 1):
                    if pending.get(r):
                        joining += spawn(r, j, c, list(new), logp[c])
                    t = choose(r, logp[c], n_new[r])
                    new.append(t)
                    n_new[r] += 1
                    if t in eos_ids or n_new[r] >= reqs[r].max_new or c == len(d) or t != d[c]:
                        break
                record(r, logits[j, : len(new)], new)
                toks[r] += new
                self.drafted_tokens += len(d)
                self.accepted_draft_tokens += len(new) - 1
                if d:
                    hits[r][0] += len(new) - 1
                    hits[r][1] += min(len(new), len(d))
                used = len(new)  # fed columns whose keys stay valid: the last token + accepted drafts
                mask[j, mask.shape[1] - width + used :] = 0
                cur[j] += used
                dsize[r] = min(dsize[r] * 2, 64) if d and used == len(d) + 1 else 8
                done = new[-1] in eos_ids or n_new[r] >= reqs[r].max_new
                # every checkpoint (each `prune_every` generated tokens) this call passed, in order, on the
                # output as it was there (a finished row's own end is not one): pruning decisions are the same
                # whether drafts took one token per call or many
                last = n_new[r] - 1 if done else n_new[r]
                while prune is not None and r not in family and checked[r] + self.prune_every <= last:
                    checked[r] += self.prune_every
                    ahead = n_new[r] - checked[r]  # tokens generated past the checkpoint
                    if prune(r, tuple(toks[r][: len(toks[r]) - ahead]), self._scores(rec[r][: len(rec[r]) - ahead])):
                        pruned.add(r)
                        break
                if not done and r not in pruned:
                    still.append(j)
            if len(still) < A or joining:
                keep = torch.tensor(still + [j for _, j, _, _ in joining], device=dev, dtype=torch.long)
                cache.batch_select_indices(keep)
                mask, cur = mask[keep], cur[keep]  # copies: a branch's row can change alone
                for k, (_, _, col, nxt) in enumerate(joining, start=len(still)):
                    mask[k, mask.shape[1] - width + col + 1 :] = 0
                    cur[k] = nxt
            alive = [alive[j] for j in still] + [ch for ch, _, _, _ in joining]

        out = []
        for r in range(B):
            if r in forks and r not in spawned:  # the parent stopped first: the branch never ran
                par = forks[r][0]
                out.append(Decoded(tuple(toks[par]), self._scores(rec[par]), forked=False,
                                   sample_logprobs=np.zeros(0) if reqs[r].sampled else None))
                continue
            out.append(Decoded(tuple(toks[r]), self._scores(rec[r]), pruned=r in pruned,
                               sample_logprobs=np.asarray(drawn[r], dtype=np.float64) if reqs[r].sampled else None,
                               forked=True if r in forks else None))
        return out

    def _beam_chunk(self, reqs, starts, lens, feds, prune) -> list[Decoded]:
        """Beam search for one chunk of requests, all beams of all requests in one batch per step.

        Each request keeps at most ``beam`` unfinished beams, ranked by sum log P of the generated tokens; a beam
        that ends (EOS, or ``max_new`` tokens) joins the request's finished list if it ranks among the ``beam``
        best candidates of its step. A request stops when no beam is left or its best finished beam scores at
        least its best unfinished one (log-probabilities only fall, so none could pass it). The result is the
        best finished beam. ``prune`` is asked every :attr:`prune_every` tokens about each request's best
        unfinished beam; a request it rejects stops (``pruned``).
        """
        dev = self.backend.device
        eos_ids = set(self.backend.tokenizer.eos_ids)
        B = len(reqs)
        inp, mask, pos, cols = self._batch(lens, feds, left_pad=True)
        W = inp.shape[1]
        res = self._forward(inp, self._fork(B, max(lens)), attention_mask=mask, position_ids=pos)
        cache, logits = res.past_key_values, res.logits  # (B, W, V)

        forced: list[list[tuple]] = [[] for _ in range(B)]  # records of each request's forced tokens
        for r, req in enumerate(reqs):
            toks = list(req.tokens[starts[r]:])
            if toks:
                _, lp, tid, tlp, ent = self._summaries(logits[r, cols[r] : W - 1], torch.tensor(toks, device=dev))
                lp, tid, tlp, ent = lp.double().tolist(), tid.cpu().numpy(), tlp.double().cpu().numpy(), ent.tolist()
                forced[r] = [(lp[j], tid[j], tlp[j], ent[j]) for j in range(len(toks))]

        # a beam: (score, generated tokens, their records); `alive[r]` pairs each with its row in the cache
        done: list[list[tuple]] = [[] for _ in range(B)]
        alive: list[list[tuple]] = [[((0.0, [], []), r)] if req.max_new > 0 else [] for r, req in enumerate(reqs)]
        pruned: set[int] = set()
        step_logits = logits[:, -1]  # (rows, V): the next-token distribution of each cached row
        cur = pos[:, -1] + 1  # position of each row's next fed token
        n = 0  # tokens generated so far by every unfinished beam
        while any(alive):
            self._check_deadline()
            logp_all, _, top_id, top_lp, ent = self._summaries(step_logits)
            new_alive: list[list[tuple]] = [[] for _ in range(B)]
            for r, req in enumerate(reqs):
                if not alive[r]:
                    continue
                w = req.beam
                cands = []  # (score, beam, row, token)
                for beam, row in alive[r]:
                    allowed = self._allowed(logp_all[row], n, req)
                    if allowed is None:
                        picks = [self.backend.tokenizer.eos_ids[0]]
                    else:
                        picks = torch.topk(allowed, w).indices.tolist()
                    for t in picks:
                        if allowed is None or allowed[t] > -float("inf"):
                            cands.append((beam[0] + float(logp_all[row, t]), beam, row, t))
                cands.sort(key=lambda c: -c[0])
                for rank, (score, beam, row, t) in enumerate(cands[: 2 * w]):
                    new = (score, beam[1] + [t], beam[2] + [(float(logp_all[row, t]), top_id[row].cpu().numpy(),
                                                             top_lp[row].double().cpu().numpy(), float(ent[row]))])
                    if t in eos_ids or n + 1 >= req.max_new:
                        if rank < w:
                            done[r].append(new)
                    elif len(new_alive[r]) < w:
                        new_alive[r].append((new, row))
                best_done = max((d[0] for d in done[r]), default=-float("inf"))
                if new_alive[r] and best_done >= new_alive[r][0][0][0]:
                    new_alive[r] = []
                if not done[r] and not new_alive[r]:  # every candidate was -inf: end the best beam as it is
                    done[r].append(alive[r][0][0])
            n += 1
            for r in range(B):  # the lookahead test on each request's best unfinished beam
                if prune is not None and new_alive[r] and n % self.prune_every == 0:
                    beam = new_alive[r][0][0]
                    if prune(r, tuple(reqs[r].tokens) + tuple(beam[1]), self._scores(forced[r] + beam[2])):
                        pruned.add(r)
                        new_alive[r] = []
            alive = new_alive
            flat = [(beam, row, r) for r in range(B) for beam, row in alive[r]]
            if not flat:
                break
            keep = torch.tensor([row for _, row, _ in flat], device=dev, dtype=torch.long)
            cache.batch_select_indices(keep)
            mask, cur = mask[keep], cur[keep]
            inp = torch.tensor([[beam[1][-1]] for beam, _, _ in flat], device=dev)
            mask = torch.cat([mask, torch.ones((len(flat), 1), dtype=mask.dtype, device=dev)], dim=1)
            res = self._forward(inp, cache, attention_mask=mask, position_ids=cur[:, None])
            cache, step_logits = res.past_key_values, res.logits[:, -1]
            cur = cur + 1
            j = 0
            for r in range(B):  # renumber: each beam now sits in its own row of the new batch
                alive[r] = [(beam, j + k) for k, (beam, _) in enumerate(alive[r])]
                j += len(alive[r])

        out = []
        for r, req in enumerate(reqs):
            if r in pruned or not done[r]:
                out.append(Decoded(tuple(req.tokens), self._scores(forced[r]), pruned=r in pruned))
                continue
            score, gen, recs = max(done[r], key=lambda d: d[0])
            out.append(Decoded(tuple(req.tokens) + tuple(gen), self._scores(forced[r] + recs)))
        return out

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

    # ------------------------------------------------------------------ gradients (GradientSession)

    def gradient_cost(self, n_tokens: int) -> int:
        """The prompt minus its last token, if not cached yet, then ``n_tokens`` fed columns twice (forward and
        backward)."""
        return self._ensure_cost(self.prompt[:-1]) + 2 * int(n_tokens)

    def _grad_forward(self, embeds):
        """Logits ``(T, V)`` (fp32) of a differentiable forward of ``embeds (1, T, d)`` after the prompt minus its
        last token (cached once, without grad; the caller's cache is copied, never touched)."""
        n = len(self.prompt) - 1
        if common_prefix(self._cached, self.prompt[:-1]) < n:
            self._ensure(self.prompt[:-1])
        cache = self._fork(1, n)
        self.forward_tokens += int(embeds.shape[1])
        self.forward_calls += 1
        pos = torch.arange(n, n + embeds.shape[1], device=self.backend.device)[None, :]
        out = self.model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, position_ids=pos)
        return out.logits[0].float()

    def _count_backward(self, n_tokens: int) -> None:
        self.forward_tokens += int(n_tokens)
        self.forward_calls += 1

    def _embedding_matrix(self):
        emb = self.model.get_input_embeddings()
        if emb is None:
            raise InputError(f"{type(self.model).__name__} exposes no input embeddings (get_input_embeddings() is "
                             "None); gradient-guided strategies need them")
        return emb.weight

    def token_gradients(self, tokens):
        """One forward on ``prompt[-1:] + tokens[:-1]`` as embeddings with grad, one ``autograd.grad`` to those
        embeddings (never to the weights: the model's ``.grad`` stays untouched)."""
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("token_gradients(): empty sequence")
        dev = self.backend.device
        E = self._embedding_matrix()
        fed = torch.tensor([self.prompt[-1], *toks[:-1]], device=dev)
        with torch.enable_grad():
            x = E[fed].detach().clone()[None]  # (1, T, d): column 0 is the prompt's last token, held constant
            x.requires_grad_(True)
            logp = torch.log_softmax(self._grad_forward(x), dim=-1)  # (T, V)
            total = logp.gather(-1, torch.tensor(toks, device=dev)[:, None]).sum()
            (g,) = torch.autograd.grad(total, x)
        self._count_backward(len(toks))
        g = g[0, 1:].float()  # d L / d embedding of the fed y_0 .. y_{T-2}
        onehot = torch.zeros((len(toks), E.shape[0]), dtype=torch.float32, device=dev)
        if len(toks) > 1:
            onehot[:-1] = g @ E.detach().float().T
        return TokenGradients(logp.detach().double().cpu().numpy(), onehot.double().cpu().numpy())

    def relaxed_objective(self, candidates, logits):
        cand = torch.as_tensor(np.asarray(candidates, dtype=np.int64), device=self.backend.device)  # (T, K)
        if cand.ndim != 2 or cand.shape[0] == 0 or tuple(np.shape(logits)) != tuple(cand.shape):
            raise ValueError(f"relaxed_objective(): candidates {tuple(cand.shape)} and logits {np.shape(logits)} "
                             "have to be the same (T, K) shape, T >= 1")
        E = self._embedding_matrix()
        T = cand.shape[0]
        with torch.enable_grad():
            theta = torch.tensor(np.asarray(logits, dtype=np.float64), dtype=torch.float32,
                                 device=self.backend.device, requires_grad=True)
            w = torch.softmax(theta, dim=-1)  # (T, K)
            soft = (w[:, :, None] * E.detach()[cand].float()).sum(1)  # (T, d)
            first = E.detach()[torch.tensor([self.prompt[-1]], device=self.backend.device)].float()
            x = torch.cat([first, soft[:-1]], 0)[None].to(E.dtype)  # (1, T, d)
            logp = torch.log_softmax(self._grad_forward(x), dim=-1)  # (T, V)
            lp = logp.gather(-1, cand)  # (T, K)
            value = (w * torch.where(w > 0, lp, torch.zeros_like(lp))).sum()
            (g,) = torch.autograd.grad(value, theta)
        self._count_backward(T)
        return float(value.detach()), g.double().cpu().numpy()
