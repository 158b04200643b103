"""The `auto` strategy (the default): conformance once its pool is scored, the fallback to
evolution on a space it cannot score, a driver job end to end with real proxies (stored,
then reused by a resumed job), bad arguments, and the spec default."""

from __future__ import annotations

import json

import numpy as np
import pyglove as pg
import pytest

from nas import api
from nas.errors import SpecError
from nas.spec import DEFAULT_STRATEGY, parse_spec
from nas.storage import Storage
from nas.strategies import (
    AutoSearch,
    RegularizedEvolution,
    SearchContext,
    TrialView,
    check_strategy,
)
from search_spaces import NB201Space
from search_spaces.pyglove_space import PyGloveSpace
from tests.conftest import stored_proxy_scores

SPACE = NB201Space()
#: A small NB201 network on 8x8 digits: proxies in milliseconds.
SMALL_ARGS = {"channels": 8, "cells_per_stage": 1, "input_channels": 1, "input_size": 8}
#: Small models, so that the suite's many refits take seconds.
FAST = {"ensemble": 2, "trees": 10, "init": 6}


def _scored(seed: int, **args) -> AutoSearch:
    """An auto strategy on nb201 whose pool is scored by the analytic proxies (params,
    flops: no network built), as `prepared` would leave it."""
    strategy = AutoSearch(SPACE, seed=seed, pool=300, proxies=["params", "flops"],
                          **{**FAST, **args})
    strategy.set_scores({k: {"params": float(SPACE.params(a)), "flops": float(SPACE.flops(a))}
                         for k, a in strategy.scorer.pool_candidates()})
    assert strategy.mode == "predictor"
    return strategy


@pytest.mark.integration
def test_auto_passes_check_strategy_once_scored():
    check_strategy(lambda seed: _scored(seed, batch=4), trials=24, window=3)


def _dict_space() -> PyGloveSpace:
    """A PyGlove hyper value (no model builder): 5^6 = 15,625 architectures."""
    return PyGloveSpace(pg.Dict(**{f"d{i}": pg.oneof(list(range(5))) for i in range(6)}))


def test_auto_falls_back_to_evolution_on_a_space_without_a_builder():
    space = _dict_space()
    strategy = AutoSearch(space, seed=1)
    assert strategy.scorer is None and strategy.mode == "evolution"
    assert strategy.preparation() is None
    # in that mode it proposes exactly what evolution does, and resumes as it does
    # (check_strategy runs over it in tests/test_strategies.py: unprepared, it is evolution)
    evo = RegularizedEvolution(space, seed=1)
    for n in range(1, 25):
        arch, same = strategy.ask(), evo.ask()
        assert space.key(arch) == space.key(same)
        for s in (strategy, evo):
            s.tell(TrialView(n, arch, space.key(arch), "completed", {}, float(arch["d0"])))
    clone = AutoSearch(_dict_space(), seed=7)
    clone.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert [space.key(clone.ask()) for _ in range(5)] == \
        [space.key(evo.ask()) for _ in range(5)]


def test_too_few_scored_pool_members_mean_evolution():
    strategy = AutoSearch(SPACE, seed=0, pool=50, proxies=["params"])
    pool = strategy.scorer.pool_candidates()
    strategy.set_scores({k: {"params": 1.0} for k, _ in pool[:3]})  # the rest failed
    assert strategy.mode == "evolution"
    assert strategy.preparation() is None


def test_the_ensemble_learns_from_free_features():
    """Told the params of a few cells as their score, the ensemble's next proposals are the
    pool's largest cells (with params among its features it needs few labels)."""
    strategy = _scored(0, init=4, kappa=0.0, trees=60, ensemble=3, batch=1)
    seen: set[str] = set()
    strategy.bind(SearchContext(is_known=lambda k: k in seen))
    params = {}
    for n in range(1, 13):
        arch = strategy.ask()
        key = SPACE.key(arch)
        seen.add(key)
        params[key] = SPACE.params(arch)
        strategy.tell(TrialView(n, arch, key, "completed", {}, float(params[key])))
    pool = sorted((SPACE.params(a) for _, a in strategy.scorer.pool_candidates()),
                  reverse=True)
    later = [params[k] for k in list(params)[6:]]
    assert min(later) >= pool[40], (later, pool[:40])


def test_resumed_state_proposes_the_same():
    strategy = _scored(5)
    seen: set[str] = set()
    strategy.bind(SearchContext(is_known=lambda k: k in seen))
    for n in range(1, 15):
        arch = strategy.ask()
        seen.add(SPACE.key(arch))
        strategy.tell(TrialView(n, arch, SPACE.key(arch), "completed", {},
                                float(np.sin(n))))
    clone = _scored(5)
    clone.bind(SearchContext(is_known=lambda k: k in seen))
    clone.load_state_dict(strategy.state_dict())
    assert [SPACE.key(clone.ask()) for _ in range(4)] == \
        [SPACE.key(strategy.ask()) for _ in range(4)]


def _spec(**overrides) -> dict:
    spec = {
        "name": "auto-test", "space": "nb201", "space_args": SMALL_ARGS,
        "strategy_args": {"pool": 12, "proxies": ["synflow", "params"], "dataset": "digits",
                          **FAST, "init": 3},
        "evaluator": "benchmark", "evaluator_args": {"table": "nb201-cifar10"},
        "objectives": [{"metric": "valid_acc", "mode": "max"}],
        "budget": {"trials": 6}, "executor": "local", "parallelism": 1, "batch_size": 1,
        "seed": 4,
    }
    spec.update(overrides)
    return spec


@pytest.mark.integration
def test_a_job_without_a_strategy_runs_auto_with_real_proxies_stored_and_reused():
    assert DEFAULT_STRATEGY == "auto" and parse_spec(_spec()).strategy == "auto"
    storage = Storage("sqlite://")
    job = api.submit(storage, _spec())
    assert api.run(storage, job) == "completed"
    first = [t.key for t in storage.trials.load(job)]
    assert len(set(first)) == 6
    # the pool's synflow scores are stored under the proxy evaluator's cache device
    assert stored_proxy_scores(storage, "synflow") == 12
    # a second job with the same seed reads them back and proposes the same trials
    again = api.submit(storage, _spec(name="auto-again"))
    assert api.run(storage, again) == "completed"
    assert [t.key for t in storage.trials.load(again)] == first


def test_bad_auto_arguments_name_the_field():
    for args, field in [({"pool": 1}, "pool"), ({"init": 0}, "init"),
                        ({"ensemble": 0}, "ensemble"), ({"kappa": -1}, "kappa"),
                        ({"batch": 0}, "batch"), ({"depth": 17}, "depth"),
                        ({"trees": 0}, "trees"), ({"proxies": ["nope"]}, "proxies"),
                        ({"sample": 9, "population": 3}, "sample"),
                        ({"proxy_space_args": {"channels": 0}}, "proxy_space_args")]:
        with pytest.raises(SpecError, match=f"strategy_args.{field}"):
            parse_spec(_spec(strategy="auto", strategy_args=args))
