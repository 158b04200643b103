"""Regularized (aging) evolution, Real et al. 2019."""

from __future__ import annotations

from collections import deque
from typing import Any

from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError, positive_int

from ._base import Strategy, TrialView, register_strategy


@register_strategy
class RegularizedEvolution(Strategy):
    """Random until `population` proposals, then: tournament of `sample` members of the
    population, mutate the best one (`mutations` decisions); the oldest member dies.

    Only trials with a score breed (failed and infeasible ones never enter the population),
    so each trial told without one is answered by one more random sample, as while filling
    the population: when most trials fail (a table holding a few cells of the space), the
    population still fills and keeps moving instead of mutating its few parents until their
    neighbourhoods are used up. A parent with no acceptable neighbour left gives way to a
    sample (`mutate_or_sample`). With no failures this is exactly Real et al.'s scheme.
    """

    name = "evolution"
    description = "regularized (aging) evolution: tournament selection, mutation, oldest dies"

    def __init__(
        self, space: SearchSpace, seed: int = 0, population: int = 20, sample: int = 5,
        mutations: int = 1,
    ) -> None:
        super().__init__(space, seed)
        self.population_size = positive_int("population", population)
        self.sample_size = positive_int("sample", sample)
        self.mutations = positive_int("mutations", mutations)
        if self.sample_size > self.population_size:
            raise ArgumentError("sample", f"({sample}) must not exceed population ({population})")
        self.population: deque[tuple[Arch, float]] = deque(maxlen=self.population_size)
        self.asked = 0
        #: random samples still due: the initial population, plus one per trial told
        #: without a score
        self.owed = self.population_size

    def ask(self) -> Arch:
        self.asked += 1
        if self.owed > 0 or not self.population:
            self.owed = max(self.owed - 1, 0)
            return self.draw_acceptable(lambda: self.space.sample(self.rng))
        k = min(self.sample_size, len(self.population))
        picks = self.rng.choice(len(self.population), size=k, replace=False)
        parent = max((self.population[int(i)] for i in picks), key=lambda m: m[1])[0]
        return self.mutate_or_sample(parent, self.mutations)

    def tell(self, trial: TrialView) -> None:
        if trial.score is not None:
            self.population.append((trial.arch, trial.score))
        else:
            self.owed += 1

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "asked": self.asked, "owed": self.owed,
                "population": [[a, s] for a, s in self.population]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.asked = state["asked"]
        # snapshots from before `owed` existed: the random phase was the first asks
        self.owed = state.get("owed", max(self.population_size - self.asked, 0))
        self.population.clear()
        self.population.extend((a, s) for a, s in state["population"])
