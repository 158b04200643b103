"""Early stopping of trials from their intermediate reports (`ctx.report(step, **metrics)`).

Two rules, both deciding from the reports of the job's trials on one metric:

- `median` (Google Vizier's median stopping rule, as Optuna's `MedianPruner`): from
  `grace_steps` on, a trial stops when its best value so far is worse than the median of the
  other trials' values at the same step, once at least `min_trials` others reported there.
- `asha` (asynchronous successive halving): rungs at `grace_steps * reduction_factor**k`;
  a trial reaching a rung goes on only while it is among the top `1 / reduction_factor` of
  the values recorded at that rung (itself included), once `min_trials` were recorded there.

A `Pruner` holds the reports; workers never touch the database, so the driver feeds it the
stored reports of the job's finished trials at start (`load`), and workers ask it through a
handle: the object itself in-process (`LocalExecutor`), a named Ray actor per job on Ray.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EarlyStopping:
    """The job's `early_stopping` field (validated by `nas.spec`)."""

    rule: str
    metric: str
    mode: str = "max"
    grace_steps: int = 1
    reduction_factor: int = 3
    min_trials: int = 5

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


class TrialPruned(Exception):  # noqa: N818 - named as Optuna's, which users know
    """Raised by `ctx.report` when the job's early-stopping rule stops the trial; an
    evaluator lets it propagate, and the trial is stored as `pruned`."""


class Pruner:
    """The reports of one job's trials and the decision for each new one."""

    def __init__(self, config: EarlyStopping | dict[str, Any]) -> None:
        self.config = config if isinstance(config, EarlyStopping) else EarlyStopping(**config)
        #: trial -> step -> value of the metric
        self.values: dict[int, dict[int, float]] = {}
        #: rung -> trial -> value recorded there (asha)
        self.rungs: dict[int, dict[int, float]] = {}

    @property
    def metric(self) -> str:
        return self.config.metric

    def load(self, reports: Iterable[tuple[int, int, str, float]]) -> None:
        """Replay stored reports (trial, step, metric, value) in order; decisions ignored."""
        for trial, step, metric, value in reports:
            if metric == self.config.metric:
                self.report(trial, step, value)

    def report(self, trial: int, step: int, value: float) -> bool:
        """Record a report; True when the trial should stop now."""
        value = float(value)
        if math.isnan(value):
            return False
        self.values.setdefault(trial, {})[step] = value
        if step < self.config.grace_steps:
            return False
        if self.config.rule == "median":
            return self._median_stops(trial, step)
        return self._asha_stops(trial, step)

    def _median_stops(self, trial: int, step: int) -> bool:
        others = [v[step] for t, v in self.values.items() if t != trial and step in v]
        if len(others) < self.config.min_trials:
            return False
        mine = self.values[trial]
        best = max if self.config.mode == "max" else min
        own = best(v for s, v in mine.items() if s <= step)
        return self.config.better(statistics.median(others), own)

    def _rung(self, step: int) -> int | None:
        """The highest rung at or below `step` (rungs: grace * rf^k; the first at step 1 or
        later, so that `grace_steps: 0` does not make every rung step 0)."""
        rung, found = max(1, self.config.grace_steps), None
        while rung <= step:
            found = rung
            rung *= self.config.reduction_factor
        return found

    def _asha_stops(self, trial: int, step: int) -> bool:
        rung = self._rung(step)
        if rung is None:
            return False
        recorded = self.rungs.setdefault(rung, {})
        if trial in recorded:  # passed this rung already: decided there
            return False
        recorded[trial] = self.values[trial][step]
        if len(recorded) < self.config.min_trials:
            return False
        keep = max(1, len(recorded) // self.config.reduction_factor)
        ranked = sorted(recorded.values(), reverse=self.config.mode == "max")
        return self.config.better(ranked[keep - 1], recorded[trial])


class RayPrunerHandle:
    """A picklable handle to the job's pruner actor (`PrunerActor`), found by name on the
    worker."""

    def __init__(self, name: str, namespace: str | None, metric: str) -> None:
        self.name, self.namespace, self.metric = name, namespace, metric
        self._actor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_actor": None}

    def report(self, trial: int, step: int, value: float) -> bool:
        import ray

        if self._actor is None:
            self._actor = ray.get_actor(self.name, namespace=self.namespace)
        return bool(ray.get(self._actor.report.remote(trial, step, value)))


class PrunerActor:
    """The job's `Pruner` as a Ray actor: every worker's reports reach one object."""

    def __init__(self, config: dict[str, Any], reports: list[tuple[int, int, str, float]]
                 ) -> None:
        self.pruner = Pruner(config)
        self.pruner.load(reports)

    def report(self, trial: int, step: int, value: float) -> bool:
        return self.pruner.report(trial, step, value)
