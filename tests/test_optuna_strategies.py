"""The Optuna strategies `tpe` and `nsga2`: conformance, arguments, search quality on
NAS-Bench-201 (with HW-NAS-Bench edge-GPU latency as the second objective of NSGA-II), and
how the driver's protocol (deduplication, a window in flight, resume) maps onto the study."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable

import numpy as np
import pytest

from nas.strategies import (
    Constraint,
    Objective,
    RandomSearch,
    SearchContext,
    Strategy,
    TrialView,
    check_strategy,
)
from nas.strategies.checks import SYNTHETIC_DEVICE, synthetic_latency
from nas.strategies.optuna import NSGA2Strategy, TPEStrategy
from search_spaces import NB201Space, get_space
from search_spaces.validation import ArgumentError
from workers.tables import load_table

SPACE = NB201Space()
#: 36 architectures, conditional (a depth-1 stage ignores its second block), with
#: single-candidate decisions: small enough to exhaust
TINY = dict(stage_channels=(16, 24), stage_strides=(1, 2), depths=(1, 2), kernel_sizes=(3, 5),
            expand_ratios=(3,), width_mults=(1.0,))
LATENCY = Objective("latency_ms", "min", "edgegpu")


@pytest.fixture(scope="module")
def accuracy() -> dict[str, dict[str, float]]:
    return load_table("nb201-cifar10").rows


@pytest.fixture(scope="module")
def latency() -> dict[str, float]:
    rows = load_table("hw-nas-bench-cifar10").rows
    return {k: r["edgegpu_latency_ms"] for k, r in rows.items() if "edgegpu_latency_ms" in r}


# ---- conformance and arguments ----------------------------------------------------------------
@pytest.mark.integration
def test_tpe_passes_check_strategy():
    check_strategy(lambda seed: TPEStrategy(SPACE, seed=seed), trials=50)


@pytest.mark.integration
def test_nsga2_passes_check_strategy_single_objective():
    """The check binds one objective: NSGA-II runs single-objective; a population of 4 makes
    the 50 trials cross many generations (and snapshots fall inside them)."""
    check_strategy(lambda seed: NSGA2Strategy(SPACE, seed=seed, population_size=4), trials=50)


@pytest.mark.parametrize("cls, args, field", [
    (TPEStrategy, {"n_startup_trials": -1}, "n_startup_trials"),
    (TPEStrategy, {"n_startup_trials": 2.5}, "n_startup_trials"),
    (TPEStrategy, {"multivariate": "yes"}, "multivariate"),
    (TPEStrategy, {"constant_liar": 1}, "constant_liar"),
    (TPEStrategy, {"n_ei_candidates": 0}, "n_ei_candidates"),
    (TPEStrategy, {"tries": 0}, "tries"),
    (NSGA2Strategy, {"population_size": 1}, "population_size"),
    (NSGA2Strategy, {"population_size": True}, "population_size"),
    (NSGA2Strategy, {"mutation_prob": 1.5}, "mutation_prob"),
    (NSGA2Strategy, {"crossover_prob": None}, "crossover_prob"),
    (NSGA2Strategy, {"swapping_prob": "half"}, "swapping_prob"),
    (NSGA2Strategy, {"tries": True}, "tries"),
])
def test_bad_strategy_args(cls, args, field):
    with pytest.raises(ArgumentError, match=f"^{field} must be") as info:
        cls(SPACE, **args)
    assert info.value.field == field


def test_unknown_strategy_arg_is_a_type_error():
    with pytest.raises(TypeError):
        TPEStrategy(SPACE, population_size=10)


# ---- a driver-like loop -------------------------------------------------------------------------
Objectives = tuple[float | None, ...] | None
#: (trial number, key) -> (score, objective values), as the driver would tell them
Evaluate = Callable[[int, str], tuple[float | None, Objectives]]
Accuracy = dict[str, dict[str, float]]


class Loop:
    """Ask/tell as the driver does: a window in flight, duplicates discarded, results told in
    trial-number order. `evaluate(number, key)` gives (score, objectives)."""

    def __init__(self, strategy: Strategy, evaluate: Evaluate,
                 objectives: tuple[Objective, ...], window: int = 1,
                 constraints: tuple[Constraint, ...] = ()) -> None:
        self.strategy, self.evaluate, self.objectives = strategy, evaluate, objectives
        self.window, self.constraints = window, constraints
        self.known: set[str] = set()
        self.pending: deque[TrialView] = deque()
        self.log: list[str] = []  # every proposal, duplicates included
        self.results: list[tuple[str, float | None, Objectives]] = []
        self.number = self.told = 0
        strategy.bind(SearchContext(objectives=objectives, constraints=constraints,
                                    value_of=synthetic_latency,
                                    is_known=self.known.__contains__))

    def clone_with(self, strategy: Strategy) -> Loop:
        twin = Loop(strategy, self.evaluate, self.objectives, self.window, self.constraints)
        twin.known.update(self.known)  # the set twin's context looks up
        twin.pending = deque(self.pending)
        twin.log, twin.results = list(self.log), list(self.results)
        twin.number, twin.told = self.number, self.told
        return twin

    def _fill(self, trials: int) -> None:
        while self.number < min(self.told + self.window, trials):
            for _ in range(500):
                arch = self.strategy.ask()
                key = self.strategy.space.key(arch)
                self.log.append(key)
                if key not in self.known:
                    break
            else:
                return  # exhausted
            self.known.add(key)
            self.number += 1
            score, objectives = self.evaluate(self.number, key)
            self.results.append((key, score, objectives))
            status = "failed" if score is None and objectives is None else "completed"
            self.pending.append(TrialView(self.number, arch, key, status, {}, score,
                                          objectives))

    def run(self, trials: int, until_told: int | None = None) -> Loop:
        until = trials if until_told is None else until_told
        self._fill(trials)
        while self.pending and self.told < until:
            self.strategy.tell(self.pending.popleft())
            self.told += 1
            self._fill(trials)
        return self


def _nb201(accuracy: Accuracy, latency: dict[str, float] | None = None) -> Evaluate:
    """(score, objectives) of an NB201 cell: valid_acc, and edge-GPU latency (None where
    HW-NAS-Bench has none)."""
    def evaluate(number: int, key: str) -> tuple[float | None, Objectives]:
        value = accuracy[key]["valid_acc"]
        if latency is None:
            return value, (value,)
        return value, (value, latency.get(key))
    return evaluate


def _best_valid(cls: type[Strategy], seed: int, trials: int, accuracy: Accuracy) -> float:
    loop = Loop(cls(SPACE, seed=seed), _nb201(accuracy),
                (Objective("valid_acc", "max"),)).run(trials)
    return max(score for _, score, _ in loop.results)


# ---- search quality -----------------------------------------------------------------------------
@pytest.mark.integration
def test_tpe_beats_random_search_on_nb201(accuracy):
    """Best valid_acc after 60 trials, 5 seeds (the optimum is 91.6067)."""
    seeds = range(5)
    tpe = [_best_valid(TPEStrategy, s, 60, accuracy) for s in seeds]
    rand = [_best_valid(RandomSearch, s, 60, accuracy) for s in seeds]
    assert np.mean(tpe) > np.mean(rand) + 0.3, (tpe, rand)
    assert sum(t > r for t, r in zip(tpe, rand, strict=True)) >= 4, (tpe, rand)


def _hypervolume(points: list[Objectives]) -> float:
    """Area dominated by (valid_acc max, latency min) points above a reference of 80 % and
    below 8 ms (what is worse than either is of no interest)."""
    ref_acc, ref_lat = 80.0, 8.0
    pts = sorted((a - ref_acc, ref_lat - lat) for a, lat in points
                 if lat is not None and a > ref_acc and lat < ref_lat)
    area, top = 0.0, 0.0
    for x, y in reversed(pts):  # from the most accurate down
        if y > top:
            area, top = area + x * (y - top), y
    return area


@pytest.mark.integration
def test_nsga2_front_improves_over_its_first_population(accuracy, latency):
    """Two objectives (valid_acc max, edge-GPU latency min), population 10, 120 trials, a
    window of 4, 3 seeds: the front of the last generation beats the (random) first one's on
    every seed, and the late proposals (last 30) hold a much better front than the first
    population and than 30 late proposals of random search."""
    objectives = (Objective("valid_acc", "max"), LATENCY)
    evaluate = _nb201(accuracy, latency)
    first, late, random_late = [], [], []
    for seed in range(3):
        loop = Loop(NSGA2Strategy(SPACE, seed=seed, population_size=10), evaluate,
                    objectives, window=4).run(120)
        points = [o for _, _, o in loop.results]
        first.append(_hypervolume(points[:10]))
        late.append(_hypervolume(points[-30:]))
        assert _hypervolume(points[-10:]) > first[-1], (seed, points[:10], points[-10:])
        baseline = Loop(RandomSearch(SPACE, seed=seed), evaluate, objectives, window=4).run(120)
        random_late.append(_hypervolume([o for _, _, o in baseline.results][-30:]))
    assert np.mean(late) > 1.3 * np.mean(first), (first, late)
    assert np.mean(late) > np.mean(random_late) + 5.0, (late, random_late)


# ---- the driver's protocol on the study ---------------------------------------------------------
def _trial_states(strategy: Strategy) -> list[str]:
    return [state for _, state, _, _ in strategy.state_dict()["trials"]]


@pytest.mark.integration
@pytest.mark.parametrize("cls", [TPEStrategy, NSGA2Strategy])
def test_two_objective_round_trip_mid_search(cls, accuracy, latency):
    """With two objectives bound and 4 trials in flight, a strategy restored from a snapshot
    (taken inside a generation, with RUNNING trials) proposes exactly what the original does."""
    objectives = (Objective("valid_acc", "max"), LATENCY)
    args = {"population_size": 5} if cls is NSGA2Strategy else {"n_startup_trials": 5}

    def fresh() -> Strategy:
        return cls(SPACE, seed=7, **args)

    evaluate = _nb201(accuracy, latency)
    reference = Loop(fresh(), evaluate, objectives, window=4).run(40)
    for pause in (3, 17, 31):
        original = Loop(fresh(), evaluate, objectives, window=4).run(40, until_told=pause)
        state = json.loads(json.dumps(original.strategy.state_dict(), allow_nan=False))
        assert _trial_states(original.strategy).count("RUNNING") == 4
        restored_strategy = fresh()
        restored_strategy.load_state_dict(state)
        restored = original.clone_with(restored_strategy).run(40)
        assert original.run(40).log == reference.log
        assert restored.log == original.log, pause


def test_nsga2_tells_unknown_or_infeasible_trials_failed(accuracy, latency):
    """A trial without a latency, or without a score (failed or infeasible, even with its
    objective values), is failed in the study; the others are complete with both values."""
    objectives = (Objective("valid_acc", "max"), LATENCY)

    def evaluate(number: int, key: str) -> tuple[float | None, Objectives]:
        value = accuracy[key]["valid_acc"]
        if number == 2:
            return value, (value, None)  # HW-NAS-Bench has no latency for some cells
        if number == 3:
            return None, (value, 1.0)  # infeasible: score None, values present
        if number == 4:
            return None, None  # failed
        return value, (value, latency.get(key, 1.0))

    strategy = NSGA2Strategy(SPACE, seed=0, population_size=4)
    loop = Loop(strategy, evaluate, objectives).run(5)
    trials = strategy.state_dict()["trials"]
    assert [t[1] for t in trials] == ["COMPLETE", "FAIL", "FAIL", "FAIL", "COMPLETE"]
    assert trials[0][2] == list(loop.results[0][2]) and trials[1][2] is None


def test_known_infeasible_proposals_are_pruned_not_proposed():
    """Under a constraint known before evaluation (about 70 % of the space breaks it), no
    proposal breaks it; the Optuna trials of the rejected ones are PRUNED (TPE counts them
    among the bad trials, so it learns where the infeasible region is)."""
    limit = 0.3
    constraint = (Constraint("latency_ms", SYNTHETIC_DEVICE, max=limit),)

    def evaluate(number: int, key: str) -> tuple[float | None, Objectives]:
        value = float(SPACE.to_dna(SPACE.from_key(key))[0])
        return value, (value,)

    strategy = TPEStrategy(SPACE, seed=1, n_startup_trials=5)
    loop = Loop(strategy, evaluate, (Objective("objective", "max"),), window=4,
                constraints=constraint).run(30)
    assert all(synthetic_latency(k, "latency_ms", SYNTHETIC_DEVICE) <= limit for k in loop.log)
    states = _trial_states(strategy)
    assert "RUNNING" not in states and states.count("PRUNED") > 10


@pytest.mark.integration
@pytest.mark.parametrize("cls", [TPEStrategy, NSGA2Strategy])
def test_exhausts_a_tiny_conditional_space(cls):
    """On a 36-architecture conditional space, with 4 in flight: every architecture is
    proposed before any repeat; Optuna keeps the raw DNA it sampled (inactive decisions
    included); the Optuna trials of rejected proposals are finished, none left RUNNING:
    COMPLETE with the told value when their architecture was told completed before, else
    FAIL (in flight, or told failed)."""
    space = get_space("mbconv", **TINY)
    weights = np.cos(np.arange(len(space.choice_counts())) * 1.3)

    def evaluate(number: int, key: str) -> tuple[float | None, Objectives]:
        if number % 6 == 0:
            return None, None
        value = float(weights @ np.asarray(space.to_dna(space.from_key(key)), dtype=float))
        return value, (value,)

    args = {"population_size": 4} if cls is NSGA2Strategy else {"n_startup_trials": 4}
    strategy = cls(space, seed=3, **args)
    loop = Loop(strategy, evaluate, (Objective("objective", "max"),), window=4).run(36)
    assert loop.number == space.size() == 36
    assert len(set(loop.log[:36])) == 36
    told = {key: score for key, score, _ in loop.results}
    trials = strategy.state_dict()["trials"]
    assert len(trials) > 36  # rejected proposals were finished in the study
    raw = 0
    for dna, state, values, _ in trials:
        key = space.key(space.from_dna(dna))
        raw += space.canonical_dna(dna) != dna
        if state == "COMPLETE":
            assert values == [told[key]], (key, values)
        else:
            assert (state, values) == ("FAIL", None), (key, state, values)
    assert raw > 0
    completed = sum(score is not None for score in told.values())
    assert [t[1] for t in trials].count("COMPLETE") > completed  # repeats of told ones
