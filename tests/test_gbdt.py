"""The GBDT predictor and its conformance suite, and the `gbdt` strategy (GBDT-NAS with
search-space pruning and predictor pretraining)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from nas.strategies import SearchContext, TrialView, check_strategy, get_strategy
from nas.strategies.gbdt import GBDTSearch
from predictors import GBDTPredictor, Predictor, check_predictor, get_predictor, list_predictors
from search_spaces import MBConvSpace, NB201Space
from search_spaces.validation import ArgumentError
from tests.conftest import ask_unseen
from workers.tables import load_table

pytestmark = pytest.mark.integration

SPACE = NB201Space()


# ---- the predictor contract ----------------------------------------------------------------
def test_gbdt_predictor_passes_check_predictor():
    assert "gbdt" in list_predictors()
    check_predictor(lambda seed: get_predictor("gbdt", seed=seed))
    check_predictor(lambda seed: GBDTPredictor(seed=seed, n_estimators=30, max_depth=2))


class _Constant(GBDTPredictor):
    def _predict(self, X):
        return np.zeros(len(X))


class _GlobalNoise(GBDTPredictor):
    def _predict(self, X):
        return super()._predict(X) + np.random.default_rng().normal(size=len(X))


class _Column(GBDTPredictor):
    def predict(self, X, *, base_margin=None):
        return super().predict(X, base_margin=base_margin)[:, None]


class _NeedsRows(GBDTPredictor):
    def _fit(self, X, y):
        if len(X) < 6:
            raise ValueError("too few rows")
        super()._fit(X, y)


class _Lenient(GBDTPredictor):
    """Trims whatever does not match instead of refusing it."""

    def fit(self, X, y, *, base_margin=None):
        X, y = np.atleast_2d(np.asarray(X, dtype=np.float32)), np.ravel(y)
        n = min(len(X), len(y))
        margin = None if base_margin is None else np.resize(np.ravel(base_margin), n)
        return super().fit(X[:n], np.nan_to_num(y[:n]), base_margin=margin)


class _DropsMargin(GBDTPredictor):
    def fit(self, X, y, *, base_margin=None):
        return super().fit(X, y)

    def predict(self, X, *, base_margin=None):
        return super().predict(X)


class _NotAPredictor:
    def __init__(self, seed=0):
        self.seed = seed


@pytest.mark.parametrize("broken, check", [
    (_Constant, "learns a ranking"),
    (_GlobalNoise, "deterministic per seed"),
    (_Column, "fit predict shapes"),
    (_NeedsRows, "tiny training sets"),
    (_Lenient, "refuses bad shapes"),
    (_DropsMargin, "base margin"),
])
def test_check_predictor_catches_a_broken_predictor(broken, check):
    with pytest.raises(AssertionError, match=re.escape(f"fails check '{check}'")):
        check_predictor(lambda seed: broken(seed=seed, n_estimators=30))


def test_check_predictor_refuses_a_non_predictor():
    with pytest.raises(AssertionError, match="not a Predictor"):
        check_predictor(_NotAPredictor)


def test_gbdt_predictor_arguments_and_warm_start():
    for bad in ({"n_estimators": 0}, {"max_depth": 1.5}, {"learning_rate": 0},
                {"subsample": 1.5}, {"min_child_weight": -1}, {"init_model": "x"},
                {"init_model": GBDTPredictor()}):
        with pytest.raises(ValueError):
            GBDTPredictor(**bad)
    with pytest.raises(ValueError, match="seed"):
        GBDTPredictor(seed="1")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, size=(80, 12)).astype(np.float32)
    y = X @ rng.normal(size=12)
    base = GBDTPredictor(seed=1, n_estimators=20).fit(X, y)
    before = base.predict(X)
    tuned = GBDTPredictor(seed=1, n_estimators=20, init_model=base).fit(X, -y)
    assert np.array_equal(base.predict(X), before)  # the initial model is left unchanged
    assert tuned.booster.num_boosted_rounds() == 40
    assert np.corrcoef(tuned.predict(X), -y)[0, 1] > 0.5
    importance = base.feature_importance()
    assert importance.shape == (12,) and (importance >= 0).all() and importance.sum() > 0
    with pytest.raises(ValueError, match="features"):
        GBDTPredictor(init_model=base).fit(X[:, :5], y)
    assert isinstance(base, Predictor)


# ---- the strategy: conformance ---------------------------------------------------------------
def test_gbdt_strategy_passes_check_strategy_with_default_args():
    check_strategy(lambda seed: get_strategy("gbdt", SPACE, seed=seed), trials=50)


def test_gbdt_strategy_passes_check_strategy_with_prune_and_pretrain():
    # small init and batch: the pruning and pretraining paths run within 40 trials
    check_strategy(lambda seed: GBDTSearch(SPACE, seed=seed, init=4, batch=3, prune=True,
                                           pretrain=True, trees=30), trials=40, window=3)


class _PoolOnly(GBDTSearch):
    """As for a space too large to enumerate: candidates from an evolution over the model."""

    enumerate_max = 0


def test_gbdt_strategy_passes_check_strategy_on_generated_pools():
    check_strategy(lambda seed: _PoolOnly(SPACE, seed=seed, init=5, pool=200, trees=30,
                                          prune=True, pretrain=True, pretrain_mode="margin"),
                   trials=30, window=2)


def test_gbdt_strategy_on_a_conditional_space():
    space = MBConvSpace()
    strategy = GBDTSearch(space, seed=0, init=3, batch=2, pool=60, trees=10, prune=True)
    seen = set()
    for number in range(1, 10):
        arch = strategy.ask()
        assert space.validate(arch) == arch
        key = space.key(arch)
        assert key not in seen
        seen.add(key)
        score = -float(space.flops(arch)) / 1e8
        strategy.tell(TrialView(number, arch, key, "completed", {"x": score}, score))
    assert strategy.fit_at > 0


@pytest.mark.parametrize("args, field", [
    ({"init": 0}, "init"), ({"batch": "5"}, "batch"), ({"explore": 1.5}, "explore"),
    ({"explore_random": -1}, "explore_random"), ({"pool": 3}, "pool"), ({"prune": "yes"}, "prune"),
    ({"pretrain": 1}, "pretrain"), ({"pretrain_target": ""}, "pretrain_target"),
    ({"pretrain_mode": "x"}, "pretrain_mode"), ({"trees": 0}, "trees"), ({"depth": 40}, "depth"),
    ({"learning_rate": 0}, "learning_rate"), ({"cost_features": None}, "cost_features"),
])
def test_gbdt_strategy_argument_errors(args, field):
    with pytest.raises(ArgumentError, match="^" + re.escape(f"{field} must be")) as info:
        GBDTSearch(SPACE, **args)
    assert info.value.field == field


def test_gbdt_strategy_rejects_unknown_arguments():
    with pytest.raises(TypeError):
        get_strategy("gbdt", SPACE, populaton=3)


# ---- the strategy: behaviour ---------------------------------------------------------------
def _drive(strategy, score, trials):
    """Window 1, duplicates discarded as the driver does; returns the told (key, score)."""
    seen, told = set(), []
    for number in range(1, trials + 1):
        arch, key = ask_unseen(strategy, SPACE, seen)
        seen.add(key)
        value = score(arch)
        strategy.tell(TrialView(number, arch, key, "completed", {"s": value}, value))
        told.append((key, value))
    return told


def _conv_count(arch):
    return sum(op == "nor_conv_3x3" for op in arch["ops"]) + 0.3 * (arch["ops"][0] == "none")


def test_state_dict_is_small_and_holds_no_model():
    strategy = GBDTSearch(SPACE, seed=0, prune=True)
    _drive(strategy, _conv_count, 60)
    state = strategy.state_dict()
    assert set(state) == {"rng", "seed", "asked", "told", "fit_at", "pruned"}
    assert len(json.dumps(state)) < 60 * 200 + 1000
    assert state["fit_at"] > 0 and state["pruned"]


def test_pruning_drops_the_worst_choices_and_never_proposes_them():
    strategy = GBDTSearch(SPACE, seed=1, init=10, prune=True, explore=0.3)
    for number in range(1, 91):
        arch = strategy.ask()
        dna = SPACE.to_dna(arch)
        assert not any(dna[d] == c for d, c in strategy.pruned), (number, arch)
        key = SPACE.key(arch)
        strategy.tell(TrialView(number, arch, key, "completed", {}, _conv_count(arch)))
    dropped = set(strategy.pruned)
    # the schedule: the first at 30 scored trials, then at most one per 10 more
    assert 1 <= len(dropped) <= 1 + (90 - 30) // 10
    assert all(c != 3 for _, c in dropped)  # conv3x3, the best choice everywhere, stays
    for d in range(6):
        assert sum((d, c) in dropped for c in range(5)) <= 4  # one choice always remains


def test_pretraining_fits_free_targets_before_any_label():
    strategy = GBDTSearch(SPACE, seed=0, pretrain=True)
    model = strategy._pretrained_model()
    assert model is not None and not strategy.told
    none = SPACE.from_dna([0] * 6)
    convs = SPACE.from_dna([3] * 6)
    low, high = model.predict(strategy.features.matrix([none, convs]))
    assert high > low  # trained on FLOPs: all conv3x3 ranks above all none
    unknown = GBDTSearch(SPACE, seed=0, pretrain=True, pretrain_target="synflow")
    assert unknown._pretrained_model() is None  # no value known: no pretraining
    assert len(_drive(unknown, _conv_count, 25)) == 25
    known = GBDTSearch(SPACE, seed=0, pretrain=True, pretrain_target="synflow")
    known.bind(SearchContext(value_of=lambda key, metric, device:
                             _conv_count(SPACE.from_key(key)) if metric == "synflow" else None))
    model = known._pretrained_model()
    assert model is not None
    low, high = model.predict(known.features.matrix([none, convs]))
    assert high > low


@pytest.mark.parametrize("mode", ["margin", "continue"])
def test_pretrained_search_finds_good_architectures(mode):
    strategy = GBDTSearch(SPACE, seed=2, pretrain=True, pretrain_mode=mode)
    told = _drive(strategy, _conv_count, 40)
    assert max(v for _, v in told) >= 5


def test_failed_trials_count_as_the_worst():
    labels = GBDTSearch.labels([None, 2.0, None, 4.0, 3.0, 4.0])
    assert labels.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.9, 0.6, 0.9])  # ties at the worst
    strategy = GBDTSearch(SPACE, seed=0, init=4, batch=1)
    rng = np.random.default_rng(0)
    for number in range(1, 9):
        arch = SPACE.sample(rng)
        score = None if number % 2 else float(number)
        strategy.tell(TrialView(number, arch, SPACE.key(arch), "failed" if score is None
                                else "completed", {}, score))
    for _ in range(5):
        SPACE.validate(strategy.ask())
    assert strategy.fit_at == 8


def _best_valid(name, seed, trials, table, **args):
    strategy = get_strategy(name, SPACE, seed=seed, **args)
    told = _drive(strategy, lambda a: table.rows[SPACE.key(a)]["valid_acc"], trials)
    return max(v for _, v in told)


def test_gbdt_beats_random_search_on_nb201():
    """5 seeds x 60 trials: the best valid_acc found (the optimum is 91.6067)."""
    table = load_table("nb201-cifar10")
    seeds = range(5)
    gbdt = [_best_valid("gbdt", s, 60, table) for s in seeds]
    random = [_best_valid("random", s, 60, table) for s in seeds]
    assert np.mean(gbdt) > np.mean(random) + 0.2, (gbdt, random)
    assert sum(g >= r for g, r in zip(gbdt, random, strict=True)) >= 4


def test_pruned_search_goes_on_when_the_unpruned_space_is_used_up():
    """300 trials with pruning on the NB201 table (the case that once ended a job early):
    once every acceptable unpruned cell is known, proposals come from the whole space."""
    table = load_table("nb201-cifar10")
    strategy = GBDTSearch(SPACE, seed=1, prune=True)
    seen = set()
    strategy.bind(SearchContext(is_known=seen.__contains__))  # as the driver does
    for number in range(1, 301):
        arch, key = ask_unseen(strategy, SPACE, seen, tries=20)  # the driver: 2000
        assert key not in seen, f"trial {number}: 20 duplicate proposals in a row"
        seen.add(key)
        value = table.rows[key]["valid_acc"]
        strategy.tell(TrialView(number, arch, key, "completed", {"valid_acc": value}, value))
    assert strategy.pruned
