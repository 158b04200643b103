"""Regularized (aging) evolution, Real et al. 2019."""

from __future__ import annotations

from collections import deque
from typing import Any

from search_spaces import Arch, SearchSpace

from ._base import Strategy, TrialView, register_strategy


def _positive_int(field: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"strategy_args.{field} must be a positive integer, got {value!r}")
    return value


@register_strategy
class RegularizedEvolution(Strategy):
    """Random until `population` proposals, then: tournament of `sample` members of the
    population, mutate the best one (`mutations` decisions); the oldest member dies."""

    name = "evolution"
    description = "regularized (aging) evolution: tournament selection, mutation, oldest dies"

    def __init__(
        self, space: SearchSpace, seed: int = 0, population: int = 20, sample: int = 5,
        mutations: int = 1,
    ) -> None:
        super().__init__(space, seed)
        self.population_size = _positive_int("population", population)
        self.sample_size = _positive_int("sample", sample)
        self.mutations = _positive_int("mutations", mutations)
        if self.sample_size > self.population_size:
            raise ValueError(
                f"strategy_args.sample ({sample}) must not exceed population ({population})")
        self.population: deque[tuple[Arch, float]] = deque(maxlen=self.population_size)
        self.asked = 0

    def ask(self) -> Arch:
        self.asked += 1
        if self.asked <= self.population_size or not self.population:
            return self.draw_acceptable(lambda: self.space.sample(self.rng))
        k = min(self.sample_size, len(self.population))
        picks = self.rng.choice(len(self.population), size=k, replace=False)
        parent = max((self.population[int(i)] for i in picks), key=lambda m: m[1])[0]
        return self.draw_acceptable(lambda: self._mutant(parent))

    def _mutant(self, parent: Arch) -> Arch:
        child = parent
        for _ in range(self.mutations):
            child = self.space.mutate(child, self.rng)
        return child

    def tell(self, trial: TrialView) -> None:
        if trial.score is not None:
            self.population.append((trial.arch, trial.score))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "asked": self.asked,
                "population": [[a, s] for a, s in self.population]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.asked = state["asked"]
        self.population.clear()
        self.population.extend((a, s) for a, s in state["population"])
