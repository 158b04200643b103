"""Executors: how batches of trials are dispatched, in-process (local) or as Ray tasks."""

from ._base import Executor
from .local import LocalExecutor
from .ray import RayExecutor, connect_ray

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "connect_ray"]
