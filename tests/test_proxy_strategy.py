"""The `proxy` strategy (score a pool, evaluate the proxy-best; or warm-start evolution) and
the database cache of proxy scores (never computed twice for one architecture and data)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from nas import api
from nas.driver import Driver
from nas.errors import SpecError
from nas.spec import parse_spec
from nas.storage import Storage
from nas.storage.schema import measurements
from nas.strategies import ProxySearch, TrialView, check_strategy
from predictors.combine import mean_rank
from search_spaces import NB201Space
from workers.evaluators.proxy import ProxyEvaluator
from workers.executors import LocalExecutor
from workers.tables import load_table

#: A small NB201 network on 8x8 digits: proxies in milliseconds.
SPACE_ARGS = {"channels": 8, "cells_per_stage": 1, "input_channels": 1, "input_size": 8}
SPACE = NB201Space(**SPACE_ARGS)
PROXIES = ["synflow", "jacov", "params"]


def _spec(**overrides) -> dict:
    spec = {
        "name": "proxy-test", "space": "nb201", "space_args": SPACE_ARGS,
        "strategy": "proxy",
        "strategy_args": {"pool": 10, "proxies": PROXIES, "dataset": "digits"},
        "evaluator": "benchmark", "evaluator_args": {"table": "nb201-cifar10"},
        "objectives": [{"metric": "valid_acc", "mode": "max"}],
        "budget": {"trials": 5}, "executor": "local", "parallelism": 1, "batch_size": 1,
        "seed": 3,
    }
    spec.update(overrides)
    return spec


class _CountingExecutor(LocalExecutor):
    """The real in-process executor, counting what it is asked to evaluate."""

    submitted: list[str] = []

    def submit(self, batch):
        _CountingExecutor.submitted.extend(t.key for t in batch)
        super().submit(batch)


def _run(storage: Storage, spec: dict) -> int:
    job = api.submit(storage, spec)
    driver = Driver(storage, job, executor_factory=lambda s, e: _CountingExecutor(
        e, slots=s.parallelism))
    assert driver.run() == "completed"
    return job


def _proxy_rows(storage: Storage) -> int:
    with storage.read() as conn:
        return conn.execute(select(func.count()).select_from(measurements).where(
            measurements.c.device.like("proxy:%"))).scalar_one()


@pytest.mark.integration
def test_proxy_strategy_evaluates_the_proxy_best_of_its_pool():
    storage = Storage("sqlite://")
    _CountingExecutor.submitted = []
    job = _run(storage, _spec())
    pool = ProxySearch(SPACE, seed=3, pool=10, proxies=PROXIES, dataset="digits")
    candidates = pool.pool_candidates()
    assert len(candidates) == 10
    # scored by workers: every pool member once, then the 5 trials
    assert sorted(_CountingExecutor.submitted[:10]) == sorted(k for k, _ in candidates)
    assert len(_CountingExecutor.submitted) == 10 + 5
    # the 5 trials are the top 5 by rank voting, recomputed here independently
    evaluator = ProxyEvaluator(SPACE, proxies=PROXIES, dataset="digits")
    values = {k: evaluator.compute(a, PROXIES) for k, a in candidates}
    keys = sorted(values)
    combined = mean_rank({p: [values[k][p] for k in keys] for p in PROXIES})
    expected = [keys[i] for i in sorted(range(10), key=lambda i: (-combined[i], keys[i]))][:5]
    trials = storage.trials.load(job)
    assert [t.key for t in trials] == expected
    table = load_table("nb201-cifar10")
    assert all(t.metrics["valid_acc"] == table.rows[t.key]["valid_acc"] for t in trials)
    # the scores are stored (synflow and jacov; params is analytic) under the data's key
    assert _proxy_rows(storage) == 10 * 2


@pytest.mark.integration
def test_a_second_job_reuses_the_stored_scores():
    storage = Storage("sqlite://")
    _CountingExecutor.submitted = []
    first = _run(storage, _spec())
    rows = _proxy_rows(storage)
    _CountingExecutor.submitted = []
    second = _run(storage, _spec(name="again"))
    assert len(_CountingExecutor.submitted) == 5  # the trials only: no proxy recomputed
    assert _proxy_rows(storage) == rows
    assert [t.key for t in storage.trials.load(first)] == \
        [t.key for t in storage.trials.load(second)]
    # another data (batch size) is another cache entry: scored again
    _CountingExecutor.submitted = []
    _run(storage, _spec(name="other-data", strategy_args={
        "pool": 10, "proxies": PROXIES, "dataset": "digits", "batch_size": 10}))
    assert len(_CountingExecutor.submitted) == 10 + 5
    assert _proxy_rows(storage) == 2 * rows
    # so is another network for the proxies (a narrower one than the job evaluates)
    _CountingExecutor.submitted = []
    _run(storage, _spec(name="narrow", strategy_args={
        "pool": 10, "proxies": PROXIES, "dataset": "digits",
        "proxy_space_args": {"channels": 4}}))
    assert len(_CountingExecutor.submitted) == 10 + 5
    assert _proxy_rows(storage) == 3 * rows


@pytest.mark.integration
def test_the_proxy_evaluator_reuses_scores_stored_by_any_job():
    storage = Storage("sqlite://")
    spec = _spec(strategy="random", strategy_args={}, evaluator="proxy",
                 evaluator_args={"proxies": PROXIES, "dataset": "digits"},
                 objectives=[{"metric": "score", "mode": "max"}], budget={"trials": 6})
    first = _run(storage, spec)
    again = _run(storage, {**spec, "name": "same seed, same archs"})
    before = {t.key: t.metrics for t in storage.trials.load(first)}
    after = storage.trials.load(again)
    assert {t.key for t in after} == set(before)
    for trial in after:
        assert trial.metrics["proxy_cached"] == 2.0  # synflow and jacov came from the DB
        for name in PROXIES:
            assert trial.metrics[f"proxy.{name}"] == before[trial.key][f"proxy.{name}"]
    assert all(before[k]["proxy_cached"] == 0.0 for k in before)


@pytest.mark.integration
def test_warm_started_evolution_begins_with_the_proxy_best():
    storage = Storage("sqlite://")
    job = _run(storage, _spec(strategy_args={"pool": 10, "proxies": PROXIES,
                                             "dataset": "digits", "mode": "evolution",
                                             "population": 4, "sample": 2},
                              budget={"trials": 10}))
    top = _run(storage, _spec(name="top", budget={"trials": 4}))
    keys = [t.key for t in storage.trials.load(job)]
    assert keys[:4] == [t.key for t in storage.trials.load(top)]
    assert len(set(keys)) == 10


def _scored_factory(seed: int) -> ProxySearch:
    strategy = ProxySearch(NB201Space(), seed=seed, pool=300, proxies=["params", "flops"])
    space = strategy.space
    strategy.set_scores({k: {"params": float(space.params(a)), "flops": float(space.flops(a))}
                         for k, a in strategy.pool_candidates()})
    return strategy


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["top", "evolution"])
def test_proxy_strategy_passes_check_strategy_once_scored(mode):
    def factory(seed):
        strategy = _scored_factory(seed)
        strategy.mode = mode
        return strategy

    check_strategy(factory, trials=40)


def test_bad_proxy_strategy_arguments_name_the_field():
    for args, field in [({"pool": 1}, "pool"), ({"mode": "best"}, "mode"),
                        ({"proxies": ["nope"]}, "proxies"), ({"batch_size": 1}, "batch_size"),
                        ({"sample": 9, "population": 3}, "sample"),
                        ({"proxy_space_args": {"channels": 0}}, "proxy_space_args"),
                        ({"proxy_space_args": {"depth": 3}}, "proxy_space_args")]:
        with pytest.raises(SpecError, match=f"strategy_args.{field}"):
            parse_spec(_spec(strategy_args=args))


def test_ask_before_scoring_is_an_error_and_state_round_trips():
    strategy = ProxySearch(NB201Space(), seed=0, pool=50, proxies=["params"])
    with pytest.raises(RuntimeError, match="before the pool was scored"):
        strategy.ask()
    strategy = _scored_factory(1)
    first = [strategy.space.key(strategy.ask()) for _ in range(3)]
    for n, key in enumerate(first, 1):
        strategy.tell(TrialView(n, strategy.space.from_key(key), key, "completed", {}, float(n)))
    clone = ProxySearch(NB201Space(), seed=1, pool=300, proxies=["params", "flops"])
    clone.load_state_dict(strategy.state_dict())
    assert [clone.space.key(clone.ask()) for _ in range(5)] == \
        [strategy.space.key(strategy.ask()) for _ in range(5)]
    assert np.all(np.diff([strategy.space.params(strategy.space.from_key(k))
                           for k in first]) <= 0)  # params alone: the biggest first
