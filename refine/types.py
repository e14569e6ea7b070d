"""Plain data passed between the engine, backends, moves and strategies.

Everything here is backend-free: token ids are Python ints, per-token numbers
are NumPy arrays on the CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .degeneration import Repeats


@dataclass(frozen=True)
class Scores:
    """Per-token model scores of a token sequence ``y`` given the prompt.

    Row ``t`` describes the distribution p(. | x, y[:t]) that produced ``y[t]``.

    Attributes:
        logprobs: ``(T,)`` log p(y[t] | x, y[:t]), float64.
        topk_ids: ``(T, K)`` the K most likely tokens at step t, most likely first.
        topk_logprobs: ``(T, K)`` their log-probabilities.
        entropy: ``(T,)`` entropy (nats) of the step-t distribution.
    """

    logprobs: np.ndarray
    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    entropy: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.logprobs)
        if not (len(self.topk_ids) == len(self.topk_logprobs) == len(self.entropy) == n):
            raise ValueError(
                "Scores arrays must have one row per token, got "
                f"{n}, {len(self.topk_ids)}, {len(self.topk_logprobs)}, {len(self.entropy)}"
            )

    def __len__(self) -> int:
        return len(self.logprobs)

    def margin(self, tokens: Sequence[int]) -> np.ndarray:
        """``(T,)`` log p(tokens[t]) minus the best log-probability of any *other* token at step t.

        Positive where ``tokens[t]`` is the mode; small values mark uncertain steps.
        """
        tok = np.asarray(tokens, dtype=np.int64)[:, None]
        others = np.where(self.topk_ids != tok, self.topk_logprobs, -np.inf)
        return self.logprobs - others.max(axis=1)

    def slice(self, start: int, stop: int | None = None) -> "Scores":
        s = slice(start, stop)
        return Scores(self.logprobs[s], self.topk_ids[s], self.topk_logprobs[s], self.entropy[s])

    @staticmethod
    def concat(parts: Sequence["Scores"]) -> "Scores":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Scores.empty(1)
        k = min(p.topk_ids.shape[1] for p in parts)
        return Scores(
            np.concatenate([p.logprobs for p in parts]),
            np.concatenate([p.topk_ids[:, :k] for p in parts]),
            np.concatenate([p.topk_logprobs[:, :k] for p in parts]),
            np.concatenate([p.entropy for p in parts]),
        )

    @staticmethod
    def empty(k: int) -> "Scores":
        return Scores(
            np.zeros(0), np.zeros((0, k), dtype=np.int64), np.zeros((0, k)), np.zeros(0)
        )


@dataclass(frozen=True)
class Hypothesis:
    """A scored output sequence.

    Attributes:
        tokens: the output token ids (prompt excluded), including a final EOS if the output ended.
        scores: per-token model scores, aligned with ``tokens``.
        value: the objective's value (higher is better).
        terms: the unweighted value of each objective term.
        text: the decoded text, when the objective, the repeat guard or the caller needed it.
        ended: whether the output ends with an end-of-sequence token (it is *finished*; one without is cut).
        repeats: how repetitive its text is (when the repeat guard is on).
        sampled: for an output whose end was sampled (a proposal with ``temperature > 0``): the log-density of
            each of its last ``len(sampled)`` tokens under the distribution it was drawn from; else ``None``.
    """

    tokens: tuple[int, ...]
    scores: Scores
    value: float
    terms: dict[str, float]
    text: str | None = None
    ended: bool = False
    repeats: Repeats | None = None
    sampled: np.ndarray | None = None

    @property
    def logprob(self) -> float:
        return float(np.sum(self.scores.logprobs))


@dataclass(frozen=True)
class Edit:
    """One accepted edit.

    Attributes:
        move: the move that proposed it (``"substitute"``, ``"regenerate"``, ``"delete"``, ``"insert"``, ...).
        position: token index in the sequence *before* the edit.
        old: tokens replaced (for regenerate: the old suffix from ``position`` on).
        new: tokens put in their place (for regenerate: the new suffix).
        before: objective value before the edit.
        after: objective value after the edit.
        step: the search step at which it was accepted.
    """

    move: str
    position: int
    old: tuple[int, ...]
    new: tuple[int, ...]
    before: float
    after: float
    step: int

    @property
    def gain(self) -> float:
        return self.after - self.before

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["old"], d["new"] = list(self.old), list(self.new)
        d["before"], d["gain"] = _finite(self.before), _finite(self.gain)
        return d


def _finite(x: float) -> float | None:
    """``x``, or None where it is not finite (the value of an empty start is ``-inf``; JSON has no infinities)."""
    return float(x) if np.isfinite(x) else None


@dataclass
class Stats:
    """Compute spent by one refinement.

    Attributes:
        forward_tokens: token positions run through the model (batch rows x input length, padding included),
            rejected candidates included; with a scorer (``RefineConfig.scorer``), both models together.
        forward_calls: model forward calls (both models with a scorer).
        scorer_forward_tokens: the scorer model's share of ``forward_tokens`` (0 without a scorer).
        scorer_forward_calls: the scorer model's share of ``forward_calls``.
        candidates: candidate sequences evaluated.
        pruned: re-decoded candidates abandoned early by the lookahead test (``prune_margin``).
        refused: candidates set aside whatever their score: unfinished where the output they would replace is
            finished, or more repetitive than it (``repeat_guard``). Counted per evaluation that returned them.
        steps: search steps (batched evaluations) taken.
        sweeps: completed passes over the positions.
        accepted: edits accepted.
        seconds: wall-clock time of the refinement.
        stop_reason: why the search stopped (``"converged"``, ``"max_sweeps"``, ``"max_forward_tokens"``,
            ``"max_seconds"``, ``"patience"``).
    """

    forward_tokens: int = 0
    forward_calls: int = 0
    scorer_forward_tokens: int = 0
    scorer_forward_calls: int = 0
    candidates: int = 0
    pruned: int = 0
    refused: int = 0
    steps: int = 0
    sweeps: int = 0
    accepted: int = 0
    seconds: float = 0.0
    stop_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RefineResult:
    """What :func:`refine.refine` returns.

    Attributes:
        tokens: refined output token ids.
        text: refined output text.
        score: objective value of the refined output.
        initial_tokens, initial_text, initial_score: the same for the output before refinement (a sampler
            started from nothing: empty, and ``-inf``, which :meth:`to_dict` writes as ``None``).
        ended, initial_ended: whether the refined and the initial output are finished (end with EOS within the
            length cap). A finished initial output is only ever replaced by a finished one; an unfinished
            (cut) one may be replaced by any admissible output that scores better, finished or not.
        terms, initial_terms: unweighted objective terms after and before.
        edits: accepted edits, in order.
        stats: compute spent.
        prompt_tokens: the prompt token ids used for scoring.
        extras: what the strategy reports besides the output (:meth:`refine.strategy.Strategy.extras`), e.g.
            ``power``'s final chain states under ``"samples"``, ``power_smc``'s weighted particles under
            ``"particles"``; plain JSON data.
    """

    tokens: list[int]
    text: str
    score: float
    initial_tokens: list[int]
    initial_text: str
    initial_score: float
    terms: dict[str, float]
    initial_terms: dict[str, float]
    edits: list[Edit]
    stats: Stats
    prompt_tokens: list[int] = field(default_factory=list)
    ended: bool = False
    initial_ended: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        return self.score - self.initial_score

    @property
    def improved(self) -> bool:
        return bool(self.edits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tokens": list(self.tokens),
            "score": _finite(self.score),
            "initial_text": self.initial_text,
            "initial_tokens": list(self.initial_tokens),
            "initial_score": _finite(self.initial_score),
            "ended": self.ended,
            "initial_ended": self.initial_ended,
            "gain": _finite(self.gain),
            "terms": dict(self.terms),
            "initial_terms": dict(self.initial_terms),
            "edits": [e.to_dict() for e in self.edits],
            "stats": self.stats.to_dict(),
            "extras": self.extras,
        }
