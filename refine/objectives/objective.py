"""The weighted sum of terms that refinement maximises (:class:`Objective`), built from a spec by name."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .term import TERMS, CandidateView, Term


#: the largest weight a term may have: beyond it a weighted sum only overflows
MAX_WEIGHT = 1e6


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
        for pair in terms:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[1], Term)):
                raise ConfigError(f"`objective` as a list holds (weight, refine.objectives.Term) pairs, but "
                                  f"has {pair!r}; name terms in a dict instead: {{'mean': 1.0, 'repetition': 1.0}}")
        names = [t.name for _, t in terms]
        if len(set(names)) != len(names):
            raise ConfigError(f"`objective` lists a term twice: {names}")
        for w, t in terms:
            if isinstance(w, bool) or not (isinstance(w, (int, float)) and math.isfinite(w)
                                           and abs(w) <= MAX_WEIGHT):
                raise ConfigError(f"`objective.{t.name}.weight` has to be a number in [-{MAX_WEIGHT:g}, "
                                  f"{MAX_WEIGHT:g}], but is {w!r}")
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
