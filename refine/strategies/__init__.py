"""Search strategies. Each registers itself in :data:`refine.strategy.STRATEGIES` on import."""

from ..strategy import Strategy
from .best_first import BestFirst
from .coordinate import CoordinateDescent
from .gradient import GradientGuided
from .hybrid import Hybrid
from .population import Population
from .power import PowerSampling
from .relaxed import Relaxed
from .smc import PowerSMC

__all__ = ["Strategy", "BestFirst", "CoordinateDescent", "GradientGuided", "Hybrid", "Population",
           "PowerSampling", "PowerSMC", "Relaxed"]
