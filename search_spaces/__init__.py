"""What can be searched: symbolic spaces and the torch modules they build.

Nothing here imports ray or sqlalchemy; torch is imported only by `build()`.
"""

from ._base import Arch, SearchSpace, get_space, list_spaces, register_space, space_class
from .checks import check_space
from .hybrid import HybridSpace
from .nb201 import NB201Space

__all__ = [
    "Arch", "SearchSpace", "HybridSpace", "NB201Space", "check_space", "get_space", "list_spaces",
    "register_space", "space_class",
]
