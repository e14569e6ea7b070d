"""Search strategies. Each registers itself in :data:`refine.strategy.STRATEGIES` on import."""

from ..strategy import Strategy
from .best_first import BestFirst
from .coordinate import CoordinateDescent
from .population import Population
from .power import PowerSampling

__all__ = ["Strategy", "BestFirst", "CoordinateDescent", "Population", "PowerSampling"]
