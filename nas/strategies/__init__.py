"""Ask/tell search strategies, registered by name (spec field `strategy`)."""

from ._base import (
    Constraint,
    Objective,
    SearchContext,
    Strategy,
    TrialView,
    get_strategy,
    list_strategies,
    register_strategy,
    strategy_class,
)
from .asvit import AsViT
from .auto import AutoSearch
from .checks import check_strategy
from .deepmad import DeepMAD
from .evolution import RegularizedEvolution
from .gbdt import GBDTSearch
from .moevo import MultiObjectiveEvolution
from .optuna import NSGA2Strategy, TPEStrategy
from .preparation import Evaluations, LongTask, Preparation
from .proxy import ProxySearch
from .random import RandomSearch
from .weight_sharing import WeightSharingStrategy

__all__ = [
    "AutoSearch",
    "Constraint", "Evaluations", "GBDTSearch", "LongTask", "MultiObjectiveEvolution",
    "Objective", "Preparation", "ProxySearch",
    "RandomSearch",
    "AsViT", "DeepMAD",
    "RegularizedEvolution", "SearchContext", "Strategy", "TrialView", "check_strategy",
    "get_strategy", "list_strategies", "register_strategy", "strategy_class", "NSGA2Strategy",
    "TPEStrategy", "WeightSharingStrategy",
]
