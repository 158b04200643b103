"""Ask/tell search strategies, registered by name (spec field `strategy`)."""

from ._base import (
    ConstraintInfo,
    ObjectiveInfo,
    SearchContext,
    Strategy,
    TrialView,
    get_strategy,
    list_strategies,
    register_strategy,
    strategy_class,
)
from .checks import check_strategy
from .evolution import RegularizedEvolution
from .moevo import MultiObjectiveEvolution
from .optuna import NSGA2Strategy, TPEStrategy
from .random import RandomSearch

__all__ = [
    "ConstraintInfo", "MultiObjectiveEvolution", "ObjectiveInfo", "RandomSearch",
    "RegularizedEvolution", "SearchContext", "Strategy", "TrialView", "check_strategy",
    "get_strategy", "list_strategies", "register_strategy", "strategy_class", "NSGA2Strategy",
    "TPEStrategy",
]
