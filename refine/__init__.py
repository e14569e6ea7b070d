"""refine: decoding-time output refinement for LLMs.

A model decodes an answer; refine searches over token edits of it and keeps an edit only
when an objective (the model's own log-probability with length handling, plus optional
repetition, coverage, reference or reward terms) improves.

    >>> import refine                                                  # doctest: +SKIP
    >>> result = refine.refine("Give me three tips for sleeping well.")  # doctest: +SKIP
    >>> print(result.text, result.gain, result.stats.forward_tokens)     # doctest: +SKIP

The core imports neither transformers nor vLLM; :mod:`refine.backends.hf`,
:mod:`refine.integrations.hf` and :mod:`refine.integrations.vllm` do.
"""

from . import moves as _moves  # noqa: F401  (registers the moves)
from . import strategies as _strategies  # noqa: F401  (registers the strategies)
from .about import __version__
from .api import refine, refine_tokens
from .config import Budget, RefineConfig
from .errors import BudgetExhausted, ConfigError, InputError, MissingDependency, RefineError, RewardError
from .moves import MOVES
from .objectives import TERMS, Objective, Term
from .search import Search
from .strategy import STRATEGIES, Strategy
from .types import Edit, Hypothesis, RefineResult, Scores, Stats

__all__ = [
    "__version__", "refine", "refine_tokens", "RefineConfig", "Budget", "RefineResult", "Edit", "Stats", "Hypothesis", "Scores",
    "Objective", "Term", "Strategy", "Search", "TERMS", "MOVES", "STRATEGIES",
    "RefineError", "ConfigError", "InputError", "RewardError", "BudgetExhausted", "MissingDependency",
]
