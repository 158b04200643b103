"""Multi-objective regularized evolution (`moevo`): aging evolution with an NSGA-II
crowded-comparison tournament.

Random proposals for the first `init` asks (default: the population size), then, on each
ask: draw `sample` members of the population, take the best by (non-domination rank,
crowding distance) -- both computed over the whole population, as NSGA-II does -- and mutate
it `mutations` times. The population holds the last `population` breedable trials, so the
oldest member dies whatever its rank (regularized evolution's aging).

Why the crowded comparison rather than a Pareto tournament (a random non-dominated member
of the sample): rank over the whole population is a total preorder, so a sample of k
members has one clear winner, selection pressure grows with `sample` as in single-objective
evolution, and crowding keeps the parents spread along the front (a Pareto tournament has no
pressure towards the front's sparse parts). With a single objective, ranks follow the score,
crowding is not used and ties go to the first drawn member: the strategy then makes exactly
the proposals of `evolution` with the same seed and arguments.

Breedable trials: a score (None for failed and constraint-violating trials: they never
breed) and a finite value for every objective. A device objective missing from the trial
(no measurement) is looked up with `SearchContext.value_of`; if still unknown, the trial
does not breed. Each failed or infeasible trial (score None) is answered by one more random
proposal, as in the random phase (as in `evolution`: with most trials failing, the
population still fills and moves; a trial that only lacks a device value does not count, so
`bench/multi_objective.py`'s proposals are unchanged), and a parent with every neighbour
known gives way to a random sample. Known constraint violations and known architectures are
never proposed (`draw_acceptable`).

Defaults (population 30, sample 5): on NB201 valid_acc x edgegpu latency (direct ask/tell,
40 seeds) populations 20, 30 and 50 were within noise of each other at 300 trials; 30 was
best at 100. Sample 3 or 2 was worse (too little pressure). See bench/multi_objective.py.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError, int_at_least, positive_int

from ..pareto import rank_and_crowding
from ._base import Strategy, TrialView, register_strategy

Member = tuple[Arch, list[float]]  # architecture, costs (every objective minimised)


@register_strategy
class MultiObjectiveEvolution(Strategy):
    """Regularized evolution over the job's objectives (NSGA-II rank + crowding tournament)."""

    name = "moevo"
    description = ("multi-objective regularized evolution: (non-domination rank, crowding) "
                   "tournament, mutation, oldest dies")

    def __init__(
        self, space: SearchSpace, seed: int = 0, population: int = 30, sample: int = 5,
        mutations: int = 1, init: int | None = None,
    ) -> None:
        super().__init__(space, seed)
        self.population_size = positive_int("population", population)
        self.sample_size = positive_int("sample", sample)
        self.mutations = positive_int("mutations", mutations)
        self.init = self.population_size if init is None else int_at_least("init", init, 0)
        if self.sample_size > self.population_size:
            raise ArgumentError("sample", f"({sample}) must not exceed population ({population})")
        self.population: deque[Member] = deque(maxlen=self.population_size)
        self.asked = 0
        self.owed = self.init  # random proposals still due (+1 per failed/infeasible trial)

    # ---- ask -------------------------------------------------------------------------------
    def ask(self) -> Arch:
        self.asked += 1
        if self.owed > 0 or not self.population:
            self.owed = max(self.owed - 1, 0)
            return self.draw_acceptable(lambda: self.space.sample(self.rng))
        parent = self._tournament()
        return self.mutate_or_sample(parent, self.mutations)

    def _tournament(self) -> Arch:
        costs = np.array([c for _, c in self.population], dtype=float)
        ranks, crowding = rank_and_crowding(costs)
        if costs.shape[1] == 1:
            crowding = np.zeros(len(costs))  # one objective: plain regularized evolution
        k = min(self.sample_size, len(self.population))
        picks = self.rng.choice(len(self.population), size=k, replace=False)
        # min() keeps the first of equals: ties go to the first drawn member
        best = min((int(i) for i in picks), key=lambda i: (ranks[i], -crowding[i]))
        return self.population[best][0]

    # ---- tell ------------------------------------------------------------------------------
    def tell(self, trial: TrialView) -> None:
        costs = self._costs(trial)
        if costs is not None:
            self.population.append((trial.arch, costs))
        elif trial.score is None:
            self.owed += 1

    def _costs(self, trial: TrialView) -> list[float] | None:
        """The trial's objective values as costs, or None when it must not breed."""
        if trial.score is None:
            return None
        objectives = self.context.objectives
        raw = trial.objectives
        if raw is None or len(raw) != len(objectives):
            if len(objectives) != 1:
                return None
            raw = (None,)
        costs = []
        for info, value in zip(objectives, raw, strict=True):
            if value is None and info.device is not None:
                value = self.context.value_of(trial.key, info.metric, info.device)
            if value is None and len(objectives) == 1:
                value = trial.score if info.mode == "max" else -trial.score
            if value is None or not math.isfinite(value):
                return None
            costs.append(-float(info.score(float(value))))
        return costs

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "asked": self.asked, "owed": self.owed,
                "population": [[arch, list(costs)] for arch, costs in self.population]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.asked = state["asked"]
        # snapshots from before `owed` existed: the random phase was the first `init` asks
        self.owed = state.get("owed", max(self.init - self.asked, 0))
        self.population.clear()
        self.population.extend((arch, [float(c) for c in costs])
                               for arch, costs in state["population"])
