"""Strategies: the conformance suite on every registered strategy, then regularized
evolution's own promises (aging, no infeasible parents, beats random on NAS-Bench-201)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from nas.strategies import (
    ProxySearch,
    RandomSearch,
    RegularizedEvolution,
    Strategy,
    TrialView,
    WeightSharingStrategy,
    check_strategy,
    get_strategy,
    list_strategies,
    strategy_class,
)
from search_spaces import NB201Space
from tests.conftest import ask_unseen
from workers.tables import load_table

SPACE = NB201Space()


#: Strategies with a preparation phase (a supernet search, scoring a proxy pool) pass the
#: same suite once prepared, in tests/test_weight_sharing_driver.py and
#: tests/test_proxy_strategy.py. `asvit` searches the `vit` space only: tests/test_asvit.py.
ASK_TELL = [n for n in list_strategies()
            if not issubclass(strategy_class(n), (WeightSharingStrategy, ProxySearch))
            and n != "asvit"]


@pytest.mark.integration
@pytest.mark.parametrize("name", ASK_TELL)
def test_every_registered_strategy_passes_check_strategy(name):
    check_strategy(lambda seed: get_strategy(name, SPACE, seed=seed))


@pytest.mark.integration
@pytest.mark.parametrize("args", [{"population": 3, "sample": 3}, {"population": 50, "sample": 2},
                                  {"population": 8, "sample": 4, "mutations": 3}])
def test_evolution_passes_check_strategy_with_its_arguments(args):
    check_strategy(lambda seed: get_strategy("evolution", SPACE, seed=seed, **args), trials=60)


# ---- the suite catches broken strategies ------------------------------------------------------
class _ForgetsRng(RegularizedEvolution):
    def state_dict(self):
        state = super().state_dict()
        del state["rng"]
        return state

    def load_state_dict(self, state):
        self.asked, self.owed = state["asked"], state["owed"]
        self.population.clear()
        self.population.extend((a, s) for a, s in state["population"])


class _GlobalRandom(RandomSearch):
    def ask(self):
        return SPACE.sample(np.random.default_rng())


class _IgnoresSeed(RandomSearch):
    def __init__(self, space, seed=0):
        super().__init__(space, seed=0)


class _NumpyState(RegularizedEvolution):
    def state_dict(self):
        return {**super().state_dict(), "asked": np.int64(self.asked)}


class _NaNScores(RegularizedEvolution):
    def tell(self, trial):
        self.population.append((trial.arch, float("nan") if trial.score is None
                                else trial.score))


class _ComparesNone(RegularizedEvolution):
    def tell(self, trial):
        self.population.append((trial.arch, trial.score))


class _InvalidProposal(RandomSearch):
    def ask(self):
        return {"ops": SPACE.sample(self.rng)["ops"][:5]}


class _SnapshotDraws(RandomSearch):
    def state_dict(self):
        self.rng.random()
        return super().state_dict()


class _ReusesProposal(RandomSearch):
    """Hands out its own dict and later edits it in place."""

    def ask(self):
        if hasattr(self, "last"):
            self.last["ops"][0] = "none"
        self.last = SPACE.sample(self.rng)
        return self.last


class _RepeatsItsBest(RegularizedEvolution):
    """Re-proposes the best architecture told so far on every third ask."""

    def ask(self):
        if self.asked % 3 == 2 and self.population:
            self.asked += 1
            return max(self.population, key=lambda m: m[1])[0]
        return super().ask()


class _IgnoresConstraints(RandomSearch):
    """New to the job, but blind to constraints."""

    def ask(self):
        while True:
            arch = SPACE.sample(self.rng)
            if not self.context.is_known(SPACE.key(arch)):
                return arch


@pytest.mark.parametrize("broken, check", [
    (_RepeatsItsBest, "never reproposes"),
    (_IgnoresConstraints, "respects constraints"),
    (_ForgetsRng, "state dict round trip"),
    (_GlobalRandom, "deterministic per seed"),
    (_IgnoresSeed, "seeds differ"),
    (_NumpyState, "state dict is json"),
    (_NaNScores, "state dict is json"),
    (_ComparesNone, "ask tell contract"),
    (_InvalidProposal, "ask tell contract"),
    (_SnapshotDraws, "state dict is json': two state_dict() calls in a row differ"),
    (_ReusesProposal, "ask tell contract"),
])
def test_check_strategy_catches_a_broken_strategy(broken, check):
    with pytest.raises(AssertionError, match=re.escape(f"fails check '{check}")):
        check_strategy(lambda seed: broken(SPACE, seed=seed))


# ---- regularized evolution ------------------------------------------------------------------
def _view(number: int, arch: dict, score: float | None, status: str = "completed") -> TrialView:
    metrics = {} if status == "failed" else {"valid_acc": 99.0 if score is None else score}
    return TrialView(number, arch, SPACE.key(arch), status, metrics, score)


def _population(strategy: Strategy) -> list[tuple[str, float]]:
    return [(SPACE.key(a), s) for a, s in strategy.state_dict()["population"]]


def test_evolution_population_ages():
    evo = RegularizedEvolution(SPACE, seed=1, population=5, sample=2)
    rng = np.random.default_rng(0)
    told = []
    for number in range(1, 13):
        arch = SPACE.sample(rng)
        evo.tell(_view(number, arch, float(number)))
        told.append((SPACE.key(arch), float(number)))
        assert len(_population(evo)) == min(number, 5)
        assert _population(evo) == told[-5:]  # the oldest dies, whatever its score
    assert (told[0][0], 1.0) not in _population(evo)
    # aging is by age, not by score: a champion leaves after `population` younger births
    evo.tell(_view(13, SPACE.sample(rng), 1000.0))
    for number in range(14, 19):
        evo.tell(_view(number, SPACE.sample(rng), 0.0))
    assert max(s for _, s in _population(evo)) == 0.0


def test_evolution_population_survives_a_state_round_trip():
    evo = RegularizedEvolution(SPACE, seed=1, population=4, sample=2)
    rng = np.random.default_rng(0)
    for number in range(1, 7):
        evo.tell(_view(number, SPACE.sample(rng), float(number)))
    fresh = RegularizedEvolution(SPACE, seed=1, population=4, sample=2)
    fresh.load_state_dict(json.loads(json.dumps(evo.state_dict())))
    assert _population(fresh) == _population(evo)
    fresh.tell(_view(7, SPACE.sample(rng), 7.0))
    assert len(_population(fresh)) == 4  # the restored deque keeps its bound


def _hamming(a: dict, b: dict) -> int:
    return sum(x != y for x, y in zip(SPACE.to_dna(a), SPACE.to_dna(b), strict=True))


def test_evolution_never_breeds_from_failed_or_infeasible_trials():
    """Failed trials and infeasible ones (score None, even with great metrics) never enter
    the population, so every child is one mutation away from a feasible member (once the
    random samples that replace the three non-breeding trials are asked)."""
    evo = RegularizedEvolution(SPACE, seed=3, population=4, sample=4)
    feasible = [{"ops": [op] * 6} for op in ("none", "skip_connect", "avg_pool_3x3")]
    # far (>= 3 decisions) from every feasible parent: a mutant of these would show
    excluded = [{"ops": ["nor_conv_3x3"] * 6}, {"ops": ["nor_conv_1x1"] * 6},
                {"ops": ["nor_conv_3x3", "nor_conv_1x1"] * 3}]
    for _ in range(4):  # the random phase
        evo.ask()
    number = 0
    for arch in feasible:
        number += 1
        evo.tell(_view(number, arch, -float(number)))
    for i, arch in enumerate(excluded):
        number += 1
        evo.tell(_view(number, arch, None, status="failed" if i % 2 else "completed"))
    assert evo.owed == 3
    for _ in range(3):
        evo.ask()
    assert sorted(k for k, _ in _population(evo)) == sorted(SPACE.key(a) for a in feasible)
    best = feasible[0]  # score -1: the tournament (of all three members) picks it
    for _ in range(200):
        child = evo.ask()
        assert _hamming(child, best) == 1, child
        assert all(_hamming(child, bad) >= 2 for bad in excluded)


def test_evolution_answers_each_trial_that_cannot_breed_with_a_random_sample():
    """Issue 17 item 9: a failed trial leaves the population short of the live parent it
    would have been, so the next proposal is a sample, as while filling the population."""
    evo = RegularizedEvolution(SPACE, seed=5, population=4, sample=2)
    rng = np.random.default_rng(1)
    parents = [evo.ask() for _ in range(4)]
    for number, arch in enumerate(parents, 1):
        evo.tell(_view(number, arch, float(number)))
    def distance(child: dict) -> int:
        return min(_hamming(child, p) for p in parents)

    assert distance(evo.ask()) == 1  # a full population: a mutation
    evo.tell(_view(5, SPACE.sample(rng), None, status="failed"))
    evo.tell(_view(6, SPACE.sample(rng), None))  # infeasible
    assert evo.owed == 2
    samples = [evo.ask() for _ in range(2)]
    assert all(distance(s) > 1 for s in samples)
    assert evo.owed == 0
    assert distance(evo.ask()) == 1


def test_evolution_resumes_a_snapshot_taken_before_failed_trials_were_counted():
    """A stored snapshot without `owed` (older versions) resumes with the random phase it
    had: the first `population` asks."""
    evo = RegularizedEvolution(SPACE, seed=2, population=6, sample=2)
    for asked in (0, 4, 9):
        state = {**evo.state_dict(), "asked": asked}
        del state["owed"]
        fresh = RegularizedEvolution(SPACE, seed=2, population=6, sample=2)
        fresh.load_state_dict(state)
        assert fresh.owed == max(6 - asked, 0)


def test_evolution_argument_errors():
    # each names its argument; only the spec adds `strategy_args.`
    with pytest.raises(ValueError, match="^population must be a positive integer"):
        RegularizedEvolution(SPACE, population=0)
    with pytest.raises(ValueError, match=r"^sample \(4\) must not exceed population \(3\)"):
        RegularizedEvolution(SPACE, population=3, sample=4)
    with pytest.raises(ValueError, match="^mutations must be"):
        RegularizedEvolution(SPACE, mutations=True)


def _best_valid_acc(name: str, seed: int, trials: int, table) -> float:  # noqa: ANN001
    """A search on the table, deduplicated as the driver does; best valid_acc found."""
    strategy = get_strategy(name, SPACE, seed=seed)
    seen: set[str] = set()
    best = -np.inf
    for number in range(1, trials + 1):
        arch, key = ask_unseen(strategy, SPACE, seen)
        seen.add(key)
        value = table.rows[key]["valid_acc"]
        best = max(best, value)
        strategy.tell(TrialView(number, arch, key, "completed", {"valid_acc": value}, value,
                                (value,)))
    return best


@pytest.mark.integration
def test_evolution_beats_random_search_on_nb201():
    """10 seeds x 150 trials each, best valid_acc found (the optimum is 91.6067):
    evolution with its default arguments beats random on the mean and on most seeds."""
    table = load_table("nb201-cifar10")
    assert max(r["valid_acc"] for r in table.rows.values()) == pytest.approx(91.6067)
    seeds = range(10)
    evolution = [_best_valid_acc("evolution", s, 150, table) for s in seeds]
    random = [_best_valid_acc("random", s, 150, table) for s in seeds]
    assert np.mean(evolution) > np.mean(random) + 0.2, (np.mean(evolution), np.mean(random))
    assert sum(e > r for e, r in zip(evolution, random, strict=True)) >= 8
