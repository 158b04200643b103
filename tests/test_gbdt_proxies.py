"""`gbdt` with `proxies` (issue 20): the pool scored training-free through the proxy
strategy's preparation, proxy scores (and their mean rank) as predictor features, the
combined proxy score as FBNetV3's free pretraining target; off by default."""

from __future__ import annotations

import json
import re

import numpy as np
import pyglove as pg
import pytest
from scipy.stats import spearmanr

from nas import api
from nas.errors import SpecError
from nas.spec import parse_spec
from nas.storage import Storage
from nas.strategies import SearchContext, TrialView, check_strategy
from nas.strategies.gbdt import GBDTSearch
from nas.strategies.proxy_features import MISSING
from search_spaces import NB201Space, get_space
from search_spaces.pyglove_space import PyGloveSpace
from search_spaces.validation import ArgumentError
from tests.conftest import stored_proxy_scores
from workers.evaluators.proxy import ProxyEvaluator

SPACE = NB201Space()
#: A small NB201 network on 8x8 digits: synflow in milliseconds.
SMALL_ARGS = {"channels": 8, "cells_per_stage": 1, "input_channels": 1, "input_size": 8}
FAST = {"trees": 10, "init": 4, "batch": 2}


def _analytic(seed: int, **args) -> GBDTSearch:
    """gbdt on nb201 with a 300-cell pool scored by the analytic proxies (no network built),
    as `prepared` would leave it."""
    strategy = GBDTSearch(SPACE, seed=seed, pool=300, proxies=["params", "flops"],
                          **{**FAST, **args})
    strategy.set_scores({k: {"params": float(SPACE.params(a)), "flops": float(SPACE.flops(a))}
                         for k, a in strategy.scorer.pool_candidates()})
    return strategy


def test_synflow_scores_become_features_of_the_pool_and_of_told_trials():
    space = get_space("nb201", **SMALL_ARGS)
    strategy = GBDTSearch(space, seed=3, pool=12, proxies=["synflow", "params"],
                          dataset="digits", **FAST)
    strategy.bind(SearchContext(space_args=SMALL_ARGS))
    with pytest.raises(RuntimeError, match="proxy scores"):
        strategy.ask()  # not prepared
    work = strategy.preparation()
    assert work is not None and work.evaluator == "proxy" and work.metrics == ("synflow",)
    assert len(work.candidates) == 12
    evaluator = ProxyEvaluator(space, **strategy.scorer.evaluator_args)
    result = {key: evaluator.compute(arch, ["synflow"], {}) for key, arch in work.candidates}
    strategy.prepared(result)
    assert strategy.preparation() is None
    pool = strategy._proxy_pool
    width = len(strategy.features.compute(work.candidates[0][1]))
    assert pool.X.shape == (12, width + 3)  # + synflow, params, their mean rank
    rows = strategy._proxy_row
    synflow = np.array([result[k]["synflow"] for k in sorted(rows)], dtype=np.float32)
    assert np.allclose(pool.X[[rows[k] for k in sorted(rows)], width], synflow, rtol=1e-6)
    assert np.all(pool.X[:, -1] != MISSING) and len(set(pool.X[:, -1])) > 1
    seen: set[str] = set()
    strategy.bind(SearchContext(space_args=SMALL_ARGS, is_known=lambda k: k in seen))
    for n in range(1, 9):
        arch = strategy.ask()
        key = space.key(arch)
        seen.add(key)
        strategy.tell(TrialView(n, arch, key, "completed", {}, float(result.get(
            key, {"synflow": 0.0})["synflow"])))
        if n > FAST["init"]:
            assert key in rows  # ranked proposals come from the scored pool
    told = strategy.told[0][0]
    if told in rows:
        assert np.array_equal(strategy._row(told), pool.X[rows[told]])
    outside = next(space.key(a) for a in (space.sample(np.random.default_rng(i))
                                          for i in range(100)) if space.key(a) not in rows)
    assert np.all(strategy._row(outside)[width:] == MISSING)


def test_the_combined_proxy_score_pretrains_the_predictor():
    strategy = _analytic(0, pretrain=True, pretrain_target="proxy")
    model = strategy._pretrained_model()
    assert model is not None and not strategy.told
    pool = strategy._proxy_pool
    rho = spearmanr(model.predict(pool.X), pool.X[:, -1]).statistic
    assert rho > 0.9, rho


def test_without_proxies_gbdt_is_unchanged():
    plain = GBDTSearch(SPACE, seed=0)
    assert plain.scorer is None and plain.preparation() is None
    assert plain.pool_size == 2000
    assert GBDTSearch.canonical_args({"prune": True}) == {"prune": True}


def test_resumed_state_proposes_the_same():
    strategy = _analytic(5)
    seen: set[str] = set()
    strategy.bind(SearchContext(is_known=lambda k: k in seen))
    for n in range(1, 12):
        arch = strategy.ask()
        seen.add(SPACE.key(arch))
        strategy.tell(TrialView(n, arch, SPACE.key(arch), "completed", {}, float(np.sin(n))))
    clone = _analytic(5)
    clone.bind(SearchContext(is_known=lambda k: k in seen))
    clone.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert [SPACE.key(clone.ask()) for _ in range(4)] == \
        [SPACE.key(strategy.ask()) for _ in range(4)]


@pytest.mark.parametrize("args, field", [
    ({"proxies": ["nope"]}, "proxies"), ({"pretrain_target": "proxy"}, "pretrain_target"),
    ({"dataset": "digits"}, "dataset"), ({"proxy_space_args": {"channels": 0}}, "proxy_space_args"),
    ({"proxies": ["synflow"], "proxy_space_args": {"channels": 0}}, "proxy_space_args"),
])
def test_bad_proxy_arguments_name_the_field(args, field):
    with pytest.raises(ArgumentError) as info:
        GBDTSearch(SPACE, **args)
    assert re.split(r"[.[]", info.value.field)[0] == field


def test_proxies_need_a_space_that_builds_models():
    space = PyGloveSpace(pg.Dict(**{f"d{i}": pg.oneof(list(range(5))) for i in range(6)}))
    with pytest.raises(ArgumentError) as info:
        GBDTSearch(space, proxies=["synflow"])
    assert info.value.field == "proxies"


@pytest.mark.integration
def test_gbdt_with_proxies_passes_check_strategy():
    check_strategy(lambda seed: _analytic(seed, batch=4), trials=24, window=3)


def _spec(**strategy_args) -> dict:
    return {
        "name": "gbdt-proxies", "space": "nb201", "space_args": SMALL_ARGS, "strategy": "gbdt",
        "strategy_args": {"pool": 12, "proxies": ["synflow"], "dataset": "digits", **FAST,
                          **strategy_args},
        "evaluator": "benchmark", "evaluator_args": {"table": "nb201-cifar10"},
        "objectives": [{"metric": "valid_acc", "mode": "max"}],
        "budget": {"trials": 6}, "executor": "local", "parallelism": 1, "batch_size": 1,
        "seed": 4,
    }


@pytest.mark.integration
def test_a_job_scores_its_pool_once_and_a_second_job_reuses_the_scores():
    storage = Storage("sqlite://")
    job = api.submit(storage, _spec(pretrain=True, pretrain_target="proxy"))
    assert api.run(storage, job) == "completed"
    first = [t.key for t in storage.trials.load(job)]
    assert len(set(first)) == 6
    assert stored_proxy_scores(storage, "synflow") == 12
    again = api.submit(storage, _spec(pretrain=True, pretrain_target="proxy"))
    assert api.run(storage, again) == "completed"
    assert [t.key for t in storage.trials.load(again)] == first


def test_bad_arguments_are_refused_by_the_spec():
    for args, field in [({"proxies": ["nope"]}, "proxies"),
                        ({"proxies": None, "dataset": None, "pretrain_target": "proxy"},
                         "pretrain_target"),
                        ({"proxies": None}, "dataset")]:
        with pytest.raises(SpecError, match=f"strategy_args.{field}"):
            parse_spec(_spec(**args))
