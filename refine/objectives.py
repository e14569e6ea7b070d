"""Objectives: what refinement maximises.

An :class:`Objective` is a weighted sum of :class:`Term` s. A term maps a batch of
candidate outputs (tokens, per-token log-probs, optionally decoded text) to one
number each; higher is better. Terms never call the model: the engine hands them
scores it already computed, so every term costs nothing beyond the forward passes.

Length handling is part of every log-probability term: ``sum`` prefers short
outputs (the empty answer is often the most probable), ``mean`` and ``gnmt``
normalise by length, ``length`` adds a per-token bonus to ``sum``.

Example:
    >>> import numpy as np
    >>> obj = Objective.from_spec({"sum": 1.0, "length": 0.5})
    >>> view = CandidateView(tokens=(5, 6, 2), logprobs=np.log([0.5, 0.5, 0.9]), ended=True)
    >>> round(float(obj.evaluate([view])[0][0]), 4)   # log .5 + log .5 + log .9 + 0.5 * 2 content tokens
    -0.4916
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import ConfigError, RewardError
from .registry import Registry


@dataclass(frozen=True)
class CandidateView:
    """What a term sees of one candidate.

    Attributes:
        tokens: output token ids (a final EOS included when ``ended``).
        logprobs: ``(T,)`` per-token log-probabilities under the model.
        text: decoded text without special tokens (present when some term has ``needs_text``).
        ended: whether the output ends with an end-of-sequence token.
    """

    tokens: tuple[int, ...]
    logprobs: np.ndarray
    text: str | None = None
    ended: bool = False

    @property
    def content_length(self) -> int:
        """Number of tokens, not counting a final EOS."""
        return len(self.tokens) - (1 if self.ended else 0)


class Term(ABC):
    """One component of an objective. Subclasses register with ``@TERMS.register(name)``."""

    name: str = "term"
    #: whether :meth:`values` reads ``CandidateView.text``
    needs_text: bool = False

    def bind(self, tokenizer: Any) -> None:
        """Called once before a search with the tokenizer view (to encode references, say)."""

    @abstractmethod
    def values(self, views: Sequence[CandidateView]) -> np.ndarray:
        """Return ``(B,)`` float64 values, higher is better."""

    def params(self) -> dict[str, Any]:
        return {}


TERMS: Registry[Term] = Registry("objective term", Term)


# ----------------------------------------------------------------------------- log-probability terms


@TERMS.register("sum")
class SumLogProb(Term):
    """Sum of token log-probabilities, log P(y | x). Prefers short outputs."""

    def values(self, views):
        return np.array([float(np.sum(v.logprobs)) for v in views])


@TERMS.register("mean")
class MeanLogProb(Term):
    """Mean token log-probability, log P(y | x) / |y|. Invites padding with predictable tokens."""

    def values(self, views):
        return np.array([float(np.sum(v.logprobs)) / max(len(v.logprobs), 1) for v in views])


@TERMS.register("gnmt")
class GNMTLogProb(Term):
    """log P(y | x) / lp(|y|) with the GNMT length penalty lp(n) = ((5 + n) / 6) ** alpha.

    ``alpha=0`` is the plain sum; ``alpha=1`` is close to the mean for long outputs.
    """

    def __init__(self, alpha: float = 0.6) -> None:
        if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 2.0):
            raise ConfigError(f"`gnmt.alpha` has to be a number in [0, 2], but is {alpha!r}")
        self.alpha = float(alpha)

    def values(self, views):
        return np.array(
            [float(np.sum(v.logprobs)) / ((5.0 + len(v.logprobs)) / 6.0) ** self.alpha for v in views]
        )

    def params(self):
        return {"alpha": self.alpha}


@TERMS.register("length")
class LengthBonus(Term):
    """Number of content tokens (final EOS excluded). With a positive weight beside ``sum`` it offsets
    the sum's preference for short outputs (a "word reward")."""

    def values(self, views):
        return np.array([float(v.content_length) for v in views])


# ----------------------------------------------------------------------------- structural terms


@TERMS.register("repetition")
class RepetitionPenalty(Term):
    """Minus the share of n-grams that repeat an earlier n-gram of the same output (0 = no repeats, -1 = all).

    >>> RepetitionPenalty(n=2).values([CandidateView((1, 2, 1, 2, 1, 2), np.zeros(6))]).tolist()
    [-0.6]
    """

    def __init__(self, n: int = 3) -> None:
        if not (isinstance(n, int) and n >= 1):
            raise ConfigError(f"`repetition.n` has to be a strictly positive integer, but is {n!r}")
        self.n = n

    def values(self, views):
        out = []
        for v in views:
            toks = v.tokens[: v.content_length]
            grams = [tuple(toks[i : i + self.n]) for i in range(len(toks) - self.n + 1)]
            if not grams:
                out.append(0.0)
                continue
            repeated = len(grams) - len(set(grams))
            out.append(-repeated / len(grams))
        return np.array(out)

    def params(self):
        return {"n": self.n}


_WORD = re.compile(r"\w+", re.UNICODE)
_SUFFIXES = ("", "s", "es", "d", "ed", "ing", "er", "ers", "est")


def _forms(word: str) -> set[str]:
    """Regular inflections of ``word``: dog -> dogs, dance -> dancing, run -> running, carry -> carried."""
    forms = {word + s for s in _SUFFIXES}
    if len(word) > 2 and word.endswith("e"):
        forms |= {word[:-1] + s for s in ("ing", "ed", "er", "ers")}
    if len(word) > 2 and word.endswith("y"):
        forms |= {word[:-1] + s for s in ("ies", "ied", "ier", "iest")}
    if len(word) > 2 and word[-1] not in "aeiouwy" and word[-2] in "aeiou":
        forms |= {word + word[-1] + s for s in ("ing", "ed", "er", "ers")}
    return forms


def _covers(word: str, text_words: set[str]) -> bool:
    """Whether ``word`` (a lemma such as "dance") appears in ``text_words`` as itself or a regular inflection."""
    return bool(_forms(word) & text_words)


def coverage(words: Sequence[str], text: str) -> float:
    """Share of ``words`` that appear in ``text`` as whole words (case-insensitive; regular inflections
    count, irregular ones such as ran/stood do not).

    >>> coverage(["dog", "run", "dance", "car"], "The dogs were running carefully.")
    0.5
    """
    text_words = set(_WORD.findall(text.lower()))
    if not words:
        return 1.0
    hit = sum(_covers(w.lower(), text_words) for w in words)
    return round(hit / len(words), 4)


@TERMS.register("coverage")
class Coverage(Term):
    """Share (0..1) of required words present in the decoded text, e.g. CommonGen concept sets."""

    needs_text = True

    def __init__(self, words: Sequence[str] = ()) -> None:
        if isinstance(words, str) or not all(isinstance(w, str) and w.strip() for w in words) or not words:
            raise ConfigError(f"`coverage.words` has to be a non-empty list of non-empty strings, but is {words!r}")
        self.words = [w.strip() for w in words]

    def values(self, views):
        return np.array([coverage(self.words, v.text or "") for v in views])

    def params(self):
        return {"words": list(self.words)}


@TERMS.register("reference_ce")
class ReferenceCrossEntropy(Term):
    """Minus the cross-entropy of the output's tokens under a reference's smoothed unigram distribution.

    With references R (text or token ids), q(w) = (count_R(w) + eps) / (|R| + eps * V), and the term is
    (1/|y|) * sum_t log q(y_t): outputs that reuse the references' tokens score higher. With several
    references the best one counts.
    """

    def __init__(self, references: Sequence[str] | Sequence[Sequence[int]] | str = (), eps: float = 0.1) -> None:
        if isinstance(references, str):
            references = [references]
        if not references:
            raise ConfigError("`reference_ce.references` has to be a non-empty list of texts or token-id lists")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ConfigError(f"`reference_ce.eps` has to be a strictly positive number, but is {eps!r}")
        self.references = list(references)
        self.eps = float(eps)
        self._tables: list[tuple[Counter, int]] | None = None
        self._vocab = 0

    def bind(self, tokenizer) -> None:
        tables = []
        for ref in self.references:
            ids = tokenizer.encode(ref) if isinstance(ref, str) else list(ref)
            tables.append((Counter(ids), len(ids)))
        self._tables = tables
        self._vocab = tokenizer.vocab_size

    def values(self, views):
        if self._tables is None:
            raise RuntimeError("ReferenceCrossEntropy.bind(tokenizer) must be called before values()")
        out = []
        for v in views:
            toks = v.tokens[: v.content_length] or v.tokens
            best = -math.inf
            for counts, n in self._tables:
                denom = n + self.eps * self._vocab
                s = sum(math.log((counts.get(t, 0) + self.eps) / denom) for t in toks) / max(len(toks), 1)
                best = max(best, s)
            out.append(best)
        return np.array(out)

    def params(self):
        return {"references": [r if isinstance(r, str) else list(r) for r in self.references], "eps": self.eps}


@TERMS.register("reward")
class Reward(Term):
    """A user function of the decoded text, ``fn(text) -> float`` (or ``fn(texts) -> floats`` with
    ``batched=True``). An exception or a non-finite value stops the refinement with :class:`RewardError`."""

    needs_text = True

    def __init__(self, fn: Callable | None = None, batched: bool = False) -> None:
        if not callable(fn):
            raise ConfigError(f"`reward.fn` has to be a callable taking the decoded text, but is {fn!r}")
        self.fn = fn
        self.batched = bool(batched)

    def values(self, views):
        texts = [v.text or "" for v in views]
        try:
            raw = list(self.fn(texts)) if self.batched else [self.fn(t) for t in texts]
        except Exception as exc:  # user code: report, never swallow
            raise RewardError(f"the reward function {self.fn!r} raised {type(exc).__name__}: {exc}") from exc
        if len(raw) != len(texts):
            raise RewardError(f"the batched reward function returned {len(raw)} values for {len(texts)} texts")
        vals = []
        for text, r in zip(texts, raw):
            try:
                f = float(r)
            except (TypeError, ValueError) as exc:
                raise RewardError(f"the reward function returned {r!r} (not a number) for {text!r}") from exc
            if not math.isfinite(f):
                raise RewardError(f"the reward function returned {f} for {text!r}; rewards must be finite")
            vals.append(f)
        return np.array(vals)

    def params(self):
        return {"fn": getattr(self.fn, "__name__", repr(self.fn)), "batched": self.batched}


# ----------------------------------------------------------------------------- the weighted sum


class Objective:
    """A weighted sum of terms: value = sum_i w_i * term_i.

    Build one from a spec with :meth:`from_spec`:

    - ``"mean"`` -- one term, weight 1;
    - ``{"sum": 1.0, "length": 0.3}`` -- name -> weight;
    - ``{"mean": 1, "coverage": {"weight": 2, "words": ["dog", "park"]}}`` -- name -> parameters;
    - a list of ``(weight, Term)`` pairs, or an :class:`Objective`.
    """

    def __init__(self, terms: Sequence[tuple[float, Term]]) -> None:
        if not terms:
            raise ConfigError("`objective` has to contain at least one term")
        names = [t.name for _, t in terms]
        if len(set(names)) != len(names):
            raise ConfigError(f"`objective` lists a term twice: {names}")
        for w, t in terms:
            if not isinstance(t, Term):
                raise ConfigError(f"`objective` terms must be refine.objectives.Term instances, got {t!r}")
            if not (isinstance(w, (int, float)) and math.isfinite(w)):
                raise ConfigError(f"`objective.{t.name}.weight` has to be a finite number, but is {w!r}")
        self.terms = [(float(w), t) for w, t in terms]

    @property
    def needs_text(self) -> bool:
        return any(t.needs_text for _, t in self.terms)

    def bind(self, tokenizer) -> None:
        for _, t in self.terms:
            t.bind(tokenizer)

    def evaluate(self, views: Sequence[CandidateView]) -> tuple[np.ndarray, list[dict[str, float]]]:
        """Return ``(values (B,), per-candidate {term: unweighted value})``."""
        total = np.zeros(len(views))
        per = [dict() for _ in views]
        for w, t in self.terms:
            vals = np.asarray(t.values(views), dtype=np.float64)
            if vals.shape != (len(views),):
                raise RuntimeError(f"term {t.name!r} returned shape {vals.shape}, expected ({len(views)},)")
            total += w * vals
            for d, v in zip(per, vals):
                d[t.name] = float(v)
        return total, per

    def describe(self) -> str:
        return " + ".join(f"{w:g}*{t.name}" for w, t in self.terms)

    def to_spec(self) -> dict[str, Any]:
        return {t.name: {"weight": w, **t.params()} for w, t in self.terms}

    @classmethod
    def from_spec(cls, spec: Any) -> "Objective":
        if isinstance(spec, Objective):
            return spec
        if isinstance(spec, str):
            spec = {spec: 1.0}
        if isinstance(spec, Mapping):
            terms = []
            for name, value in spec.items():
                term_cls = TERMS.get(name, field="objective")
                if isinstance(value, Mapping):
                    params = dict(value)
                    weight = params.pop("weight", 1.0)
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    params, weight = {}, value
                else:
                    raise ConfigError(
                        f"`objective.{name}` has to be a weight or a dict of parameters, but is {value!r}"
                    )
                try:
                    term = term_cls(**params)
                except TypeError as exc:
                    raise ConfigError(f"`objective.{name}`: bad parameters {params!r} ({exc})") from exc
                terms.append((weight, term))
            return cls(terms)
        if isinstance(spec, (list, tuple)):
            return cls(list(spec))
        raise ConfigError(
            f"`objective` has to be a term name, a dict of terms, or an Objective, but is {spec!r}"
        )
