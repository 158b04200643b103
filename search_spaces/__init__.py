"""What can be searched: symbolic spaces and the torch modules they build.

Nothing here imports ray or sqlalchemy; torch is imported only by `build()`.
"""

from ._base import Arch, SearchSpace, get_space, list_spaces, register_space, space_class
from .checks import check_space
from .darts import DartsSpace
from .hybrid import HybridSpace
from .hytra import HyTraSpace
from .mbconv import MBConvSpace
from .nb201 import NB201Space
from .quant import QuantSpace
from .vit import ViTSpace

__all__ = [
    "Arch", "DartsSpace", "HybridSpace", "HyTraSpace", "MBConvSpace", "NB201Space", "QuantSpace",
    "SearchSpace", "ViTSpace", "check_space", "get_space", "list_spaces", "register_space",
    "space_class",
]
