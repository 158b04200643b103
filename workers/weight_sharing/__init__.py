"""Weight-sharing searches (DARTS family, FBNet, one-shot supernets) that run as one long,
checkpointed task on a worker; see `_base.WeightSharingSearch`."""

from ._base import (
    CHECKPOINT,
    SearchOutcome,
    WeightSharingSearch,
    get_search,
    list_searches,
    register_search,
    search_class,
)
from .bossnas import BossNASSearch
from .darts import DartsSearch, DifferentiableSearch, PCDartsSearch, RartsSearch
from .fbnet import FBNetSearch
from .fbnetv5 import FBNetV5Search
from .oneshot import OneShotSearch
from .tas import TASSearch

__all__ = ["BossNASSearch", "CHECKPOINT", "DartsSearch", "DifferentiableSearch", "FBNetSearch",
           "FBNetV5Search",
           "OneShotSearch", "PCDartsSearch", "RartsSearch", "SearchOutcome", "TASSearch",
           "WeightSharingSearch", "get_search", "list_searches", "register_search", "search_class"]
