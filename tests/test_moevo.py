"""`moevo` (multi-objective regularized evolution) and the `nas.pareto` helpers: conformance,
reduction to `evolution` with one objective, breeding rules, constraints, a hypervolume win
over random search on NAS-Bench-201 x HW-NAS-Bench, and the helpers against brute force."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from nas import pareto
from nas.strategies import (
    Constraint,
    Objective,
    RegularizedEvolution,
    SearchContext,
    TrialView,
    check_strategy,
    get_strategy,
)
from nas.strategies.checks import DriverLoop
from nas.strategies.moevo import MultiObjectiveEvolution
from search_spaces import NB201Space
from search_spaces.validation import ArgumentError
from tests.conftest import ask_unseen
from workers.tables import load_table

SPACE = NB201Space()
LATENCY = ("latency_ms", "edgegpu")
TWO_OBJECTIVES = (Objective("valid_acc", "max"), Objective("latency_ms", "min", "edgegpu"))


@pytest.fixture(scope="module")
def tables() -> tuple[dict, dict]:
    accuracy = {k: r["valid_acc"] for k, r in load_table("nb201-cifar10").rows.items()}
    latency = {k: r["edgegpu_latency_ms"]
               for k, r in load_table("hw-nas-bench-cifar10").rows.items()
               if "edgegpu_latency_ms" in r}
    return accuracy, latency


def _value_of(latency: dict):  # noqa: ANN202
    def value_of(key: str, metric: str, device: str | None) -> float | None:
        return latency.get(key) if (metric, device) == LATENCY else None
    return value_of


# ---- conformance and reduction -------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("args", [{}, {"population": 5, "sample": 2, "init": 0, "mutations": 2}])
def test_moevo_passes_check_strategy(args):
    check_strategy(lambda seed: get_strategy("moevo", SPACE, seed=seed, **args))


@pytest.mark.parametrize("args", [{}, {"population": 8, "sample": 4, "mutations": 2}])
def test_one_objective_is_regularized_evolution(args):
    """Same seed, same arguments, one objective: exactly evolution's proposals."""
    args = {"population": 20, "sample": 5, **args}
    moevo = DriverLoop(MultiObjectiveEvolution(SPACE, seed=4, **args), 120, 1).run().log
    evolution = DriverLoop(RegularizedEvolution(SPACE, seed=4, **args), 120, 1).run().log
    assert moevo == evolution


def test_argument_errors():
    for args, field in [({"population": 0}, "population"), ({"sample": 0}, "sample"),
                        ({"population": 3, "sample": 4}, "sample"),
                        ({"mutations": True}, "mutations"), ({"init": -1}, "init"),
                        ({"init": 2.5}, "init")]:
        with pytest.raises(ArgumentError, match=rf"^{field}\b") as info:
            MultiObjectiveEvolution(SPACE, **args)
        assert info.value.field == field  # the spec alone prefixes strategy_args.


# ---- breeding rules ------------------------------------------------------------------------
def _view(number: int, arch: dict, objectives: tuple | None, score: float | None = 0.0,
          status: str = "completed") -> TrialView:
    return TrialView(number, arch, SPACE.key(arch), status, {}, score, objectives)


def _population_keys(strategy: MultiObjectiveEvolution) -> list[str]:
    return [SPACE.key(arch) for arch, _ in strategy.state_dict()["population"]]


def _hamming(a: dict, b: dict) -> int:
    return sum(x != y for x, y in zip(SPACE.to_dna(a), SPACE.to_dna(b), strict=True))


def test_only_feasible_trials_with_known_objectives_breed():
    known = {"|none~0|+|none~0|none~1|+|none~0|none~1|none~2|": 2.0}
    strategy = MultiObjectiveEvolution(SPACE, seed=0, population=10, sample=2)
    strategy.bind(SearchContext(objectives=TWO_OBJECTIVES, value_of=_value_of(known)))
    archs = [{"ops": [op] * 6} for op in ("none", "skip_connect", "nor_conv_1x1",
                                          "nor_conv_3x3", "avg_pool_3x3")]
    strategy.tell(_view(1, archs[0], (50.0, None)))  # latency known before: breeds
    strategy.tell(_view(2, archs[1], (60.0, None)))  # latency unknown: does not
    strategy.tell(_view(3, archs[2], (99.0, 0.1), score=None))  # infeasible: does not
    strategy.tell(_view(4, archs[3], None, score=None, status="failed"))
    strategy.tell(_view(5, archs[4], (70.0, 3.0)))
    assert _population_keys(strategy) == [SPACE.key(archs[0]), SPACE.key(archs[4])]
    assert [c for _, c in strategy.state_dict()["population"]] == [[-50.0, 2.0], [-70.0, 3.0]]


@pytest.mark.parametrize("sample, winners", [(4, {0, 2}), (2, {0, 1, 2})])
def test_tournament_prefers_rank_then_crowding(sample, winners):
    """Front 0: archs 0, 1, 2 on a line (1 in the middle, finite crowding); arch 3 alone in
    front 1 (infinite crowding there). Drawing all four, an end of front 0 wins; drawing
    two, arch 3 never wins (rank comes before crowding). The parents are far apart (6
    decisions), so each child (one mutation) shows which one was picked."""
    strategy = MultiObjectiveEvolution(SPACE, seed=1, population=4, sample=sample, init=0)
    strategy.bind(SearchContext(objectives=TWO_OBJECTIVES))
    archs = [{"ops": [op] * 6} for op in ("none", "skip_connect", "nor_conv_1x1",
                                          "nor_conv_3x3")]
    values = [(80.0, 1.0), (85.0, 2.0), (90.0, 3.0), (70.0, 5.0)]
    for number, (arch, objectives) in enumerate(zip(archs, values, strict=True), 1):
        strategy.tell(_view(number, arch, objectives))
    parents = []
    for _ in range(200):
        child = strategy.ask()
        parents += [i for i, arch in enumerate(archs) if _hamming(child, arch) == 1]
    assert len(parents) == 200 and set(parents) == winners


@pytest.mark.integration
def test_multi_objective_state_round_trip(tables):
    accuracy, latency = tables
    reference = _search("moevo", 3, 120, accuracy, latency, {"population": 10})[0]
    for pause in (0, 15, 60):
        strategy, seen = _strategy("moevo", 3, latency, {"population": 10})
        first = _loop(strategy, seen, 1, pause, accuracy, latency)
        state = json.loads(json.dumps(strategy.state_dict(), allow_nan=False))
        fresh, _ = _strategy("moevo", 3, latency, {"population": 10}, seen)
        fresh.load_state_dict(state)
        assert first + _loop(fresh, seen, pause + 1, 120, accuracy, latency) == reference


# ---- on the tables -------------------------------------------------------------------------
def _strategy(name: str, seed: int, latency: dict, args: dict, seen: set | None = None,
              constraints: tuple = ()):  # noqa: ANN202
    seen = set() if seen is None else seen
    strategy = get_strategy(name, SPACE, seed=seed, **args)
    strategy.bind(SearchContext(objectives=TWO_OBJECTIVES, constraints=constraints,
                                value_of=_value_of(latency), is_known=seen.__contains__))
    return strategy, seen


def _loop(strategy, seen: set, start: int, stop: int, accuracy: dict,  # noqa: ANN001
          latency: dict, limit: float | None = None) -> list[str]:
    """Trials start..stop as the driver runs them with a window of one (duplicates dropped)."""
    keys = []
    for number in range(start, stop + 1):
        arch, key = ask_unseen(strategy, SPACE, seen)
        seen.add(key)
        keys.append(key)
        acc, lat = accuracy[key], latency.get(key)
        feasible = limit is None or lat is None or lat <= limit
        strategy.tell(TrialView(number, arch, key, "completed", {"valid_acc": acc},
                                acc if feasible else None, (acc, lat)))
    return keys


def _search(name: str, seed: int, trials: int, accuracy: dict, latency: dict,
            args: dict | None = None) -> tuple[list[str], float]:
    """(keys proposed, hypervolume of the found front) with the table's worst point as
    reference."""
    strategy, seen = _strategy(name, seed, latency, args or {})
    keys = _loop(strategy, seen, 1, trials, accuracy, latency)
    points = [(-accuracy[k], latency[k]) for k in keys if k in latency]
    reference = (-min(accuracy[k] for k in latency), max(latency.values()))
    return keys, pareto.hypervolume(np.array(points), reference)


@pytest.mark.integration
def test_moevo_beats_random_in_hypervolume(tables):
    """6 seeds x 250 trials: moevo's front dominates more than random's on every seed
    (bench/multi_objective.py: 48 of 50 seeds at 300 trials through the driver)."""
    accuracy, latency = tables
    moevo = [_search("moevo", s, 250, accuracy, latency)[1] for s in range(6)]
    random = [_search("random", s, 250, accuracy, latency)[1] for s in range(6)]
    assert all(m > r for m, r in zip(moevo, random, strict=True)), (moevo, random)


def test_latency_constraint_is_respected(tables):
    accuracy, latency = tables
    limit = 4.0  # about a quarter of the cells with a latency
    constraint = (Constraint("latency_ms", "edgegpu", max=limit),)
    strategy, seen = _strategy("moevo", 2, latency, {"population": 20}, constraints=constraint)
    keys = _loop(strategy, seen, 1, 200, accuracy, latency, limit=limit)
    assert len(set(keys)) == 200
    over = [k for k in keys if latency.get(k, 0.0) > limit]
    assert not over, f"{len(over)} proposals known to break latency <= {limit} ms"
    assert all(latency[SPACE.key(a)] <= limit for a, _ in strategy.state_dict()["population"])


# ---- pareto helpers against brute force ---------------------------------------------------
def _brute_ranks(points: np.ndarray) -> list[int]:
    """Rank = length of the longest chain of dominators above a point."""
    ranks: dict[int, int] = {}

    def rank(i: int) -> int:
        if i not in ranks:
            above = [j for j in range(len(points)) if pareto.dominates(points[j], points[i])]
            ranks[i] = 1 + max(map(rank, above)) if above else 0
        return ranks[i]

    return [rank(i) for i in range(len(points))]


@pytest.mark.parametrize("seed", range(4))
def test_non_dominated_sort_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 6, size=(40, 2 + seed % 3)).astype(float)  # ties and duplicates
    ranks = pareto.non_domination_ranks(points)
    assert ranks.tolist() == _brute_ranks(points)
    assert pareto.pareto_mask(points).tolist() == (ranks == 0).tolist()
    fronts = pareto.non_dominated_sort(points)
    assert sorted(np.concatenate(fronts).tolist()) == list(range(len(points)))


def test_crowding_distance():
    front = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 2.0], [4.0, 0.0]])
    # interior points: (3 - 0) / 4 + (4 - 2) / 4 and (4 - 1) / 4 + (3 - 0) / 4
    assert pareto.crowding_distance(front).tolist() == [np.inf, 1.25, 1.5, np.inf]
    assert pareto.crowding_distance(front[:2]).tolist() == [np.inf, np.inf]
    ranks, crowding = pareto.rank_and_crowding(np.vstack([front, [[5.0, 5.0]]]))
    assert ranks.tolist() == [0, 0, 0, 0, 1] and crowding[4] == np.inf


def _union_volume(points: np.ndarray, reference: np.ndarray) -> float:
    """Inclusion-exclusion over every subset of boxes [point, reference]."""
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            corner = np.max(subset, axis=0)
            total += (-1) ** (size + 1) * np.prod(np.clip(reference - corner, 0, None))
    return total


@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_2d_exact_against_a_grid(seed):
    """Integer points: counting the unit cells of the grid that some point dominates is exact."""
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 20, size=(30, 2)).astype(float)
    reference = np.array([18.0, 17.0])  # some points lie outside the box
    cells = np.stack(np.meshgrid(np.arange(18) + 0.5, np.arange(17) + 0.5), -1).reshape(-1, 2)
    covered = np.any(np.all(points[None, :, :] <= cells[:, None, :], axis=2), axis=1)
    assert pareto.hypervolume(points, reference) == pytest.approx(covered.sum())


def test_hypervolume_2d_against_monte_carlo():
    rng = np.random.default_rng(7)
    points = rng.random((25, 2))
    reference = np.ones(2)
    samples = rng.random((200_000, 2))
    covered = np.zeros(len(samples), dtype=bool)
    for p in points:
        covered |= np.all(samples >= p, axis=1)
    assert pareto.hypervolume(points, reference) == pytest.approx(covered.mean(), abs=5e-3)


@pytest.mark.parametrize("dims, n", [(1, 5), (2, 7), (3, 7), (4, 6), (5, 5)])
def test_hypervolume_nd_matches_inclusion_exclusion(dims, n):
    rng = np.random.default_rng(dims)
    for _ in range(5):
        points = np.round(rng.random((n, dims)), 1)  # ties included
        reference = np.full(dims, 1.0)
        assert pareto.hypervolume(points, reference) == \
            pytest.approx(_union_volume(points, reference))


def test_hypervolume_edge_cases():
    assert pareto.hypervolume(np.empty((0, 2)), [1.0, 1.0]) == 0.0
    assert pareto.hypervolume([[2.0, 0.0]], [1.0, 1.0]) == 0.0  # outside the box
    assert pareto.hypervolume([[1.0, 0.0]], [1.0, 1.0]) == 0.0  # on its border
    with pytest.raises(ValueError):
        pareto.hypervolume([[0.0, 0.0]], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        pareto.hypervolume([[np.nan, 0.0]], [1.0, 1.0])


def test_table_front():
    rows = {"a": {"acc": 90.0, "lat": 5.0}, "b": {"acc": 80.0, "lat": 1.0},
            "c": {"acc": 85.0, "lat": 6.0}, "d": {"acc": 95.0}, "e": {"acc": 90.0, "lat": 5.0}}
    objectives = [("acc", "max"), ("lat", "min")]
    assert pareto.table_front(rows, objectives) == ["a", "b", "e"]  # c dominated, d lacks lat
    keys, costs = pareto.table_costs(rows, objectives)
    assert keys == ["a", "b", "c", "e"] and costs[0].tolist() == [-90.0, 5.0]
    with pytest.raises(ValueError, match="modes"):
        pareto.to_costs([[1.0]], ["maximize"])
