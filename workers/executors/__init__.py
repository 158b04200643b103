from ._base import Executor
from .local import LocalExecutor
from .ray import RayExecutor, connect_ray

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "connect_ray"]
