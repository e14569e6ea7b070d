"""One prompt on a vLLM engine: scoring candidates and re-decoding suffixes (:class:`VLLMSession`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from vllm import SamplingParams

from ...errors import InputError
from ...types import Scores
from ..base import DecodeRequest, Decoded, Session
from ..logprobs import scores_from_logprobs
from ..prefix import score_start
from .processor import EXTRA_KEY, force_spec

if TYPE_CHECKING:
    from .backend import VLLMBackend


class VLLMSession(Session):
    """One prompt on a :class:`VLLMBackend`. Each :meth:`score` is one engine call (``"prefill"``: sometimes
    two), each :meth:`decode` one engine call, step-wise with a ``prune`` callback; the calls go through the
    backend's :class:`~refine.backends.vllm.transport.EngineTransport` (a ``vllm.LLM`` or an ``AsyncLLM``).

    Each row's ``start`` is the length of the prefix it shares with ``base`` (at most ``len(row) - 1``).
    With ``"force"`` the row is sent as the prompt ``prompt + row[:start]`` with ``row[start:]`` forced;
    decode requests likewise, then generate. vLLM's prefix cache serves whatever of a prompt it computed
    before (whole KV blocks only).

    Scores per position: the raw log-probability of the token (vLLM's fp32 log-softmax, as float64), the
    top-K ids and log-probabilities (K = ``topk``), and the entropy -- exact (computed by the forcing
    processor over the full vocabulary, before any masking) when the backend can read the processor's
    records, otherwise :func:`topk_entropy_estimate` (always with ``"prefill"``/``"prompt_logprobs"``;
    decoding uses the processor, so decoded scores have exact entropies whenever records can be read).
    """

    #: generated tokens between two calls of the ``prune`` callback for a row (as the HF backend)
    prune_every = 4
    #: :attr:`~refine.backends.base.Session.banned` ids travel in each decode request's forcing spec (``deny``)
    supports_banned = True

    def __init__(self, backend: VLLMBackend, prompt: Sequence[int], topk: int, max_batch_tokens: int) -> None:
        if len(prompt) == 0:
            raise InputError("the prompt is empty; refine needs at least one prompt token to condition on")
        topk = int(topk)
        if topk > backend.max_logprobs:
            raise InputError(
                f"topk={topk} exceeds the engine's max_logprobs={backend.max_logprobs}; start it with a larger "
                "`max_logprobs` (make_llm() uses 64) or lower `topk_store`"
            )
        self.backend = backend
        self.transport = backend.transport
        self.prompt = tuple(int(t) for t in prompt)
        self.topk = topk
        self.max_batch_tokens = int(max_batch_tokens)
        self.vocab = backend.tokenizer.vocab_size
        self.forward_tokens = 0
        self.forward_calls = 0
        #: (prompt tokens, prefix-cache hits) of every request sent, for inspection
        self.cache_log: list[tuple[int, int]] = []

    # -------------------------------------------------------------------- helpers

    def _account(self, outs: Sequence[Any]) -> None:
        steps = 0
        for o in outs:
            cached = getattr(o, "num_cached_tokens", None) or 0
            gen = len(o.outputs[0].token_ids)
            self.forward_tokens += len(o.prompt_token_ids) - cached + max(gen - 1, 0)
            self.cache_log.append((len(o.prompt_token_ids), cached))
            steps = max(steps, gen)
        self.forward_calls += steps

    def _generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Any]:
        outs = self.transport.generate(prompts, params, deadline=self.deadline)
        self._account(outs)
        return outs

    def _generate_stepwise(
        self, prompts: list[list[int]], params: list[SamplingParams], watch: Callable[[int, Any], bool]
    ) -> list[Any]:
        """Like :meth:`_generate`, with ``DELTA`` outputs: after new tokens ``watch(i, partial_output)`` is asked
        about every unfinished request ``i``; True aborts it (its partial output is returned with ``stopped=True``).
        """
        outs = self.transport.generate_stepwise(prompts, params, watch, deadline=self.deadline)
        self._account(outs)
        return outs

    def _params(self, max_tokens: int, spec: dict[str, Any], ignore_eos: bool) -> SamplingParams:
        return SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            logprobs=self.topk,
            ignore_eos=ignore_eos,
            stop_token_ids=None if ignore_eos else list(self.backend.tokenizer.eos_ids),
            detokenize=False,
            skip_special_tokens=False,
            extra_args={EXTRA_KEY: spec},
        )

    def _check_ids(self, rows: Sequence[Sequence[int]]) -> None:
        for r, row in enumerate(rows):
            for pos, t in enumerate(row):
                if not 0 <= t < self.vocab:
                    raise InputError(f"row {r} has token id {t} at position {pos}, outside the vocabulary "
                                     f"[0, {self.vocab})")

    def _key(self) -> str | None:
        return self.backend.next_key() if self.backend.wants_entropy_records else None

    def _check_len(self, n: int) -> None:
        if n > self.backend.max_length:
            raise InputError(
                f"prompt + output ({n} tokens) exceed the engine's max_model_len={self.backend.max_length}"
            )

    @staticmethod
    def _not_forced() -> RuntimeError:
        return RuntimeError(
            "the forcing logits processor did not act (vLLM generated other tokens): is "
            "ForcedTokensProcessor registered with this engine?"
        )

    # -------------------------------------------------------------------- scoring

    def score_cost(self, seqs: Sequence[Sequence[int]], base: Sequence[int] = ()) -> int:
        # "force": prompt + row[:start] (nothing assumed cached), then row[start:] forced (the last never fed);
        # "prefill": prompt + row, plus, for a row re-sent without cache reading, at most the len(row) - start
        # positions its first attempt computed after its cache hit
        n = len(self.prompt)
        if self.backend.method == "prefill":
            base = tuple(base)
            return sum(n + 2 * len(s) - score_start(tuple(s), base) for s in seqs)
        return sum(n + len(s) for s in seqs)

    def score(self, seqs: Sequence[Sequence[int]], base: Sequence[int] = ()) -> list[tuple[int, Scores]]:
        seqs = [tuple(int(t) for t in s) for s in seqs]
        if not seqs:
            return []
        if any(len(s) == 0 for s in seqs):
            raise ValueError("score(): empty sequence")
        for s in seqs:
            self._check_len(len(self.prompt) + len(s))
        self._check_ids(seqs)
        base = tuple(int(t) for t in base)
        starts = [score_start(s, base) for s in seqs]
        if self.backend.method in ("prefill", "prompt_logprobs"):
            return self._score_prompt_logprobs(seqs, starts)
        keys = [self._key() for _ in seqs]
        prompts = [list(self.prompt) + list(s[:st]) for s, st in zip(seqs, starts)]
        params = [
            self._params(len(s) - st, force_spec(s[st:], key=key), ignore_eos=True)
            for s, st, key in zip(seqs, starts, keys)
        ]
        with self.backend.recording(keys):
            outs = self._generate(prompts, params)
        ents = self.backend.collect_entropies([k for k in keys if k]) or {}
        result = []
        for s, st, key, o in zip(seqs, starts, keys, outs):
            c = o.outputs[0]
            if tuple(c.token_ids) != s[st:]:
                raise self._not_forced()
            result.append((st, scores_from_logprobs(s[st:], c.logprobs, self.topk, self.vocab, ents.get(key))))
        return result

    def _score_prompt_logprobs(self, seqs: list[tuple[int, ...]], starts: list[int]) -> list[tuple[int, Scores]]:
        """Score rows as prompts with ``prompt_logprobs`` (methods ``"prefill"`` and ``"prompt_logprobs"``).

        ``"prefill"`` lets vLLM read the prefix cache (``skip_reading_prefix_cache=False``): its prompt
        log-probabilities are then valid only for positions after ``num_cached_tokens`` (checked on this
        build: the cached positions come back as placeholder entries). Rows whose cache hit reaches into
        the positions to score are sent again without cache reading, in a second call.
        """
        p = len(self.prompt)
        prompts = [list(self.prompt) + list(s) for s in seqs]

        def params(read_cache: bool) -> SamplingParams:
            return SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=self.topk, detokenize=False,
                                  ignore_eos=True, skip_reading_prefix_cache=not read_cache)

        read = self.backend.method == "prefill"
        outs = self._generate(prompts, [params(read)] * len(seqs))
        if read:
            redo = [r for r, (st, o) in enumerate(zip(starts, outs)) if (o.num_cached_tokens or 0) >= p + st]
            if redo:
                again = self._generate([prompts[r] for r in redo], [params(False)] * len(redo))
                for r, o in zip(redo, again):
                    outs[r] = o
        result = []
        for s, st, o in zip(seqs, starts, outs):
            if o.prompt_logprobs is None or len(o.prompt_logprobs) != p + len(s):
                raise RuntimeError("vLLM returned prompt log-probabilities that do not align with the prompt")
            entries = o.prompt_logprobs[p + st : p + len(s)]
            result.append((st, scores_from_logprobs(s[st:], entries, self.topk, self.vocab)))
        return result

    # -------------------------------------------------------------------- decoding

    def decode_cost(self, requests: Sequence[DecodeRequest], base: Sequence[int] = ()) -> int:
        return sum(len(self.prompt) + len(r.tokens) + max(int(r.max_new), 0) for r in requests)

    def decode(
        self,
        requests: Sequence[DecodeRequest],
        base: Sequence[int] = (),
        limit: float | None = None,
        prune: Any = None,
    ) -> list[tuple[int, Decoded]]:
        """Greedy continuations, all in one engine call.

        ``limit`` is accepted and ignored (no speculation: vLLM schedules the steps). With ``prune`` the engine
        is driven step by step (:meth:`~refine.backends.vllm.transport.EngineTransport.generate_stepwise`, ``DELTA``
        outputs); every :attr:`prune_every` generated tokens each unfinished row is offered to
        ``prune(row, tokens, scores)`` (scores with estimated entropies) and aborted when it returns True.
        """
        requests = list(requests)
        if any(r.fork is not None for r in requests):
            raise ValueError("the vLLM backend does not take `fork` requests (supports_fork is False)")
        if not requests:
            return []
        odd = [r for r in requests if r.beam > 1 or r.sampled]
        if odd:
            raise InputError(
                f"the vLLM backend re-decodes greedily only, but got a request with beam={odd[0].beam}, "
                f"temperature={odd[0].temperature}: use the Hugging Face backend for the `regenerate_beam` move, "
                "the `power` and `power_smc` strategies and `population` (sampled proposals)"
            )
        self._check_ids([r.tokens for r in requests])
        if not self.backend.can_decode:
            raise InputError(
                "decoding with vLLM needs the forcing logits processor: start the engine with "
                "refine.backends.vllm.make_llm(...) or LLM(..., logits_processors=[ForcedTokensProcessor])"
            )
        base = tuple(int(t) for t in base)
        eos_ids = self.backend.tokenizer.eos_ids
        room = self.backend.max_length - len(self.prompt)
        starts: list[int] = []
        todo: list[int] = []
        prompts, params, keys, cut_eos = [], [], [], []
        for r, req in enumerate(requests):
            tokens = tuple(int(t) for t in req.tokens)
            self._check_len(len(self.prompt) + len(tokens))
            st = score_start(tokens, base)
            starts.append(st)
            forced = list(tokens[st:])
            max_new = max(0, min(int(req.max_new), room - len(tokens)))
            if not forced and max_new == 0:
                continue
            key = self._key()
            nf = len(forced)
            spec = force_spec(
                forced,
                ban=eos_ids,
                ban_from=nf,
                ban_until=nf + int(req.min_new),
                deny=sorted(self.banned),
                eos_at=nf + max_new - 1 if (req.force_eos and max_new > 0) else None,
                eos=eos_ids[0],
                key=key,
            )
            # an EOS among the forced tokens would stop vLLM there: ignore EOS, cut after the first generated one
            has_eos = any(t in eos_ids for t in forced)
            todo.append(r)
            prompts.append(list(self.prompt) + list(tokens[:st]))
            params.append(self._params(nf + max_new, spec, ignore_eos=has_eos))
            keys.append(key)
            cut_eos.append(has_eos)
        every = max(1, int(self.prune_every))

        def watch(i: int, o: Any) -> bool:
            r = todo[i]
            nf = len(requests[r].tokens) - starts[r]
            got = o.outputs[0].token_ids
            n_new = len(got) - nf
            if cut_eos[i] and n_new > 0 and got[-1] in eos_ids:
                return True  # the EOS vLLM was told to ignore: done
            if prune is None or n_new - checked[i] < every:
                return False
            checked[i] = n_new
            tokens = tuple(int(t) for t in requests[r].tokens)
            sc = scores_from_logprobs(got, o.outputs[0].logprobs, self.topk, self.vocab)
            if prune(r, tokens[: starts[r]] + tuple(got), sc):
                pruned.add(i)
                return True
            return False

        checked = [0] * len(prompts)
        pruned: set[int] = set()
        with self.backend.recording(keys):
            if not prompts:
                outs = []
            elif prune is not None or any(cut_eos):
                outs = self._generate_stepwise(prompts, params, watch)
            else:
                outs = self._generate(prompts, params)
        ents = self.backend.collect_entropies([k for k in keys if k]) or {}
        result: list[tuple[int, Decoded] | None] = [None] * len(requests)
        for i, (r, key, o, cut) in enumerate(zip(todo, keys, outs, cut_eos)):
            tokens = tuple(int(t) for t in requests[r].tokens)
            st = starts[r]
            c = o.outputs[0]
            forced = tokens[st:]
            got = tuple(int(t) for t in c.token_ids)
            if got[: len(forced)] != forced[: len(got)] or (len(got) < len(forced) and i not in pruned):
                raise self._not_forced()
            if cut:
                for j in range(len(forced), len(got)):
                    if got[j] in eos_ids:
                        got = got[: j + 1]
                        break
            sc = scores_from_logprobs(got, c.logprobs[: len(got)], self.topk, self.vocab, ents.get(key))
            result[r] = (st, Decoded(tokens[:st] + got, sc, pruned=i in pruned))
        for r, req in enumerate(requests):
            if result[r] is None:  # nothing to force, nothing to generate
                result[r] = (starts[r], Decoded(tuple(int(t) for t in req.tokens), Scores.empty(self.topk)))
        return result  # type: ignore[return-value]
