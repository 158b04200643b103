"""A strategy with a preparation phase, defined here and run through the unchanged driver
(`Strategy.preparation` / `prepared`): its pool is evaluated on the job's executor kind
(in-process, or Ray workers) before the first ask, the result is in the snapshot so a paused
and resumed job never prepares twice, and a driver's stop event pauses the job."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from nas import api
from nas.driver import Driver
from nas.storage import Storage
from nas.strategies import Evaluations, Strategy
from search_spaces import Arch, NB201Space, SearchSpace
from workers.executors import LocalExecutor

POOL = 12
#: (evaluator, keys) of every batch the executors were given, in order
SUBMITTED: list[tuple[str, list[str]]] = []


class SmallestFirst(Strategy):
    """Evaluates a pool with the `analytic` evaluator before its first ask, then proposes it
    fewest FLOPs first (random samples past it)."""

    name = "test-smallest-first"
    description = "test: analytic-scored pool, smallest first"

    def __init__(self, space: SearchSpace, seed: int = 0, pool: int = POOL) -> None:
        super().__init__(space, seed)
        self.seed = seed
        self.pool = pool
        self.order: list[str] | None = None
        self.cursor = 0

    def candidates(self) -> list[tuple[str, Arch]]:
        rng = np.random.default_rng(self.seed)
        found: dict[str, Arch] = {}
        while len(found) < self.pool:
            arch = self.space.sample(rng)
            found.setdefault(self.space.key(arch), arch)
        return list(found.items())

    def preparation(self) -> Evaluations | None:
        if self.order is not None:
            return None
        return Evaluations("analytic", {}, self.candidates(), ("flops",))

    def prepared(self, result: dict[str, dict[str, float]]) -> None:
        self.order = sorted((k for k, v in result.items() if "flops" in v),
                            key=lambda k: (result[k]["flops"], k))

    def ask(self) -> Arch:
        assert self.order is not None, "ask() before the preparation"
        while self.cursor < len(self.order):
            key = self.order[self.cursor]
            self.cursor += 1
            if self.acceptable(self.space.from_key(key), key):
                return self.space.from_key(key)
        return self.draw_acceptable(lambda: self.space.sample(self.rng))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "order": self.order, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.order, self.cursor = state["order"], int(state["cursor"])


def _counting(base: type) -> type:
    """The real executor class, recording what it is given."""
    class Counting(base):  # type: ignore[misc, valid-type]
        def submit(self, batch):  # noqa: ANN001, ANN202
            SUBMITTED.append((self.spec.evaluator, [t.key for t in batch]))
            super().submit(batch)
    return Counting


def _spec(**overrides: Any) -> dict[str, Any]:
    # by reference, not registered: a strategy in the user's (here the test's) own module
    spec = {"name": "prep", "space": "nb201", "strategy": f"{__name__}:SmallestFirst",
            "evaluator": "benchmark", "evaluator_args": {"table": "nb201-cifar10"},
            "objectives": [{"metric": "valid_acc", "mode": "max"}],
            "budget": {"trials": 5}, "executor": "local", "parallelism": 1, "batch_size": 1,
            "seed": 4}
    spec.update(overrides)
    return spec


def _expected(seed: int, n: int) -> list[str]:
    """The `n` fewest-FLOPs architectures of the pool, computed here independently."""
    space = NB201Space()
    pool = SmallestFirst(space, seed=seed).candidates()
    return [k for _, k in sorted((space.flops(a), k) for k, a in pool)][:n]


def _pool_batches() -> list[str]:
    return [k for evaluator, keys in SUBMITTED if evaluator == "analytic" for k in keys]


@pytest.mark.integration
def test_a_strategy_with_a_preparation_runs_through_the_driver_and_prepares_once(db_url):
    storage = Storage(db_url)
    job = api.submit(storage, _spec())
    SUBMITTED.clear()
    stop = threading.Event()

    class StopAtFirstTrial(_counting(LocalExecutor)):
        def submit(self, batch):  # noqa: ANN001, ANN202
            super().submit(batch)
            if self.spec.evaluator == "benchmark":  # the first trial: past the preparation
                stop.set()

    driver = Driver(storage, job, heartbeat_s=0.01, stop=stop,
                    executor_factory=lambda s, e: StopAtFirstTrial(e, slots=1))
    assert driver.run() == "paused"  # the stop event pauses it as a SIGINT would
    row = storage.jobs.get(job)
    assert row.status == "paused" and row.lease_owner is None
    assert "nas resume" in row.error
    assert sorted(_pool_batches()) == sorted(k for k, _ in SmallestFirst(
        NB201Space(), seed=4).candidates())
    assert row.strategy_state["order"] is not None  # prepared, in the snapshot
    # resumed: the preparation is not run again, the trials follow its ranking
    SUBMITTED.clear()
    resumed = Driver(storage, job, executor_factory=lambda s, e: _counting(LocalExecutor)(
        e, slots=1))
    assert resumed.run() == "completed"
    assert _pool_batches() == []
    assert [t.key for t in storage.trials.load(job)] == _expected(4, 5)


def test_a_cancel_during_the_preparation_ends_the_job_with_the_strategy_s_note(db_url):
    storage = Storage(db_url)
    job = api.submit(storage, _spec())
    SUBMITTED.clear()

    class CancelAtFirstBatch(_counting(LocalExecutor)):
        def submit(self, batch):  # noqa: ANN001, ANN202
            super().submit(batch)
            if len(SUBMITTED) == 1:  # the driver holds the lease: it honours it at its beat
                assert storage.jobs.request_cancel(job) == "cancelling"

    driver = Driver(storage, job, executor_factory=lambda s, e: CancelAtFirstBatch(e, 1))
    assert driver.run() == "cancelled"
    row = storage.jobs.get(job)
    assert row.note == "cancelled by the user while its strategy was preparing"
    assert row.strategy_state is None and storage.trials.load(job) == []
    assert len(_pool_batches()) < POOL  # stopped at the first heartbeat


@pytest.mark.ray
def test_the_preparation_runs_on_ray_workers():
    import ray

    from workers.executors import RayExecutor

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        storage = Storage("sqlite://")
        job = api.submit(storage, _spec(executor="ray", parallelism=2))
        SUBMITTED.clear()
        driver = Driver(storage, job, executor_factory=lambda s, e: _counting(RayExecutor)(
            e, slots=s.parallelism))
        assert driver.run() == "completed"
    finally:
        ray.shutdown()
    assert sorted(_pool_batches()) == sorted(k for k, _ in SmallestFirst(
        NB201Space(), seed=4).candidates())
    assert [t.key for t in storage.trials.load(job)] == _expected(4, 5)


@pytest.mark.integration
def test_one_registration_of_a_weight_sharing_search_makes_its_strategy():
    """`@register_search` alone: the strategy registry makes the strategy when it loads."""
    from nas.strategies import WeightSharingStrategy, list_strategies, strategy_class
    from nas.strategies._base import STRATEGIES
    from workers.weight_sharing import WeightSharingSearch
    from workers.weight_sharing._base import SEARCHES

    saved = SEARCHES.snapshot(), STRATEGIES.snapshot()
    try:
        searches = set(SEARCHES.names())
        assert searches <= set(list_strategies())
        for name in searches:
            assert strategy_class(name).method == name

        class TinySearch(WeightSharingSearch):  # registered, never run
            name = "test-tiny-search"
            description = "test: a search registered once"
            spaces = ("nb201",)

        SEARCHES.register(TinySearch.name, TinySearch)
        cls = strategy_class("test-tiny-search")
        assert issubclass(cls, WeightSharingStrategy) and cls.method == "test-tiny-search"
        assert cls.description == "test: a search registered once; nb201 spaces"
        assert STRATEGIES.origin("test-tiny-search") == SEARCHES.origin("test-tiny-search")
    finally:
        SEARCHES.restore(saved[0])
        STRATEGIES.restore(saved[1])
