"""Search strategies. Each registers itself in :data:`refine.registry.STRATEGIES` on import."""

from ..search import Strategy
from .best_first import BestFirst
from .coordinate import CoordinateDescent

__all__ = ["Strategy", "BestFirst", "CoordinateDescent"]
