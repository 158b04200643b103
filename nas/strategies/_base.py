"""The `Strategy` contract: ask/tell, deterministic per seed, resumable from `state_dict`."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from search_spaces import Arch, SearchSpace

_REGISTRY: dict[str, type[Strategy]] = {}


@dataclass(frozen=True)
class TrialView:
    """What a strategy is told about a finished trial.

    `score` is the primary objective turned into "higher is better" (negated for `min`);
    it is None when the trial failed or violates a constraint, so strategies never breed
    from an infeasible parent.
    """

    number: int
    arch: Arch
    key: str
    status: str
    metrics: dict[str, float]
    score: float | None
    objectives: tuple[float, ...] | None = None


class Strategy(abc.ABC):
    """Proposes architectures. The driver deduplicates proposals and counts the budget."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.rng = np.random.default_rng(seed)

    @abc.abstractmethod
    def ask(self) -> Arch:
        """The next architecture to evaluate."""

    def tell(self, trial: TrialView) -> None:  # noqa: B027 - stateless strategies ignore it
        """Learn from a finished trial (completed or failed)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; `load_state_dict` of it continues the same sequence."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    _REGISTRY[cls.name] = cls
    return cls


def list_strategies() -> list[str]:
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_strategies())
        raise KeyError(f"unknown strategy {name!r}; known: {known}") from None


def get_strategy(name: str, space: SearchSpace, seed: int = 0, **args: Any) -> Strategy:
    return strategy_class(name)(space, seed=seed, **args)
