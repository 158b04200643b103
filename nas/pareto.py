"""Pareto helpers (pure numpy): dominance, non-dominated sorting, crowding distance,
hypervolume, and the true Pareto front of a table.

Convention: every function takes *costs*, an (n, m) array where every objective is
minimised. `to_costs` turns raw values with `max`/`min` modes into costs (a `max` objective
is negated), so a reference point for the hypervolume is also given in costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

MODES = ("max", "min")


def _costs(points: ArrayLike) -> np.ndarray:
    array = np.asarray(points, dtype=float)
    if array.ndim == 1 and array.size == 0:
        return array.reshape(0, 0)
    if array.ndim != 2:
        raise ValueError(f"expected an (n, m) array of costs, got shape {array.shape}")
    return array


def to_costs(values: ArrayLike, modes: Sequence[str]) -> np.ndarray:
    """Raw objective values (n, m) in the given modes -> costs (every column minimised)."""
    if any(mode not in MODES for mode in modes):
        raise ValueError(f"modes must be 'max' or 'min', got {list(modes)}")
    array = np.asarray(values, dtype=float)
    signs = np.array([-1.0 if mode == "max" else 1.0 for mode in modes])
    return array * signs


def dominates(a: ArrayLike, b: ArrayLike) -> bool:
    """True when cost vector `a` is no worse than `b` everywhere and better somewhere."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all(a <= b) and np.any(a < b))


def dominance_matrix(points: ArrayLike) -> np.ndarray:
    """`D[i, j]` is True when point i dominates point j (O(n^2 m) memory: for populations)."""
    costs = _costs(points)
    no_worse = np.all(costs[:, None, :] <= costs[None, :, :], axis=2)
    better = np.any(costs[:, None, :] < costs[None, :, :], axis=2)
    return no_worse & better


def non_dominated_sort(points: ArrayLike) -> list[np.ndarray]:
    """Fronts of indices, best first (Deb et al.'s fast non-dominated sort).

    Front 0 is the Pareto set; front k holds the points dominated only by points of
    fronts < k. Identical points share a front. Indices within a front are ascending.
    """
    costs = _costs(points)
    if len(costs) == 0:
        return []
    dominated_by = dominance_matrix(costs)
    remaining = dominated_by.sum(axis=0)  # number of not-yet-peeled dominators of each point
    fronts = []
    current = np.flatnonzero(remaining == 0)
    while current.size:
        fronts.append(current)
        remaining = remaining - dominated_by[current].sum(axis=0)
        remaining[current] = -1  # peeled
        current = np.flatnonzero(remaining == 0)
    return fronts


def non_domination_ranks(points: ArrayLike) -> np.ndarray:
    """The front number (0 = Pareto set) of every point."""
    costs = _costs(points)
    ranks = np.zeros(len(costs), dtype=int)
    for rank, front in enumerate(non_dominated_sort(costs)):
        ranks[front] = rank
    return ranks


def pareto_mask(points: ArrayLike) -> np.ndarray:
    """True for the non-dominated points; scales to large tables (O(n f m), f = front size).

    In lexicographic order no point is dominated by a later one, so one pass that checks each
    point against the front found so far is exact.
    """
    costs = _costs(points)
    mask = np.zeros(len(costs), dtype=bool)
    if len(costs) == 0:
        return mask
    order = np.lexsort(costs.T[::-1])
    front = np.empty((0, costs.shape[1]))
    for i in order:
        point = costs[i]
        if front.size and np.any(np.all(front <= point, axis=1) & np.any(front < point, axis=1)):
            continue
        mask[i] = True
        front = np.vstack([front, point])
    return mask


def crowding_distance(points: ArrayLike) -> np.ndarray:
    """NSGA-II crowding distance of the points of one front.

    For each objective the points are sorted; the two extremes get infinity, every other
    point the gap between its neighbours normalised by the objective's range (an objective
    with zero range adds nothing). Larger means lonelier, i.e. more worth keeping.
    """
    costs = _costs(points)
    n = len(costs)
    distance = np.zeros(n)
    if n == 0:
        return distance
    for column in costs.T:
        order = np.argsort(column, kind="stable")
        distance[order[0]] = distance[order[-1]] = np.inf
        span = column[order[-1]] - column[order[0]]
        if n > 2 and span > 0:
            gaps = (column[order[2:]] - column[order[:-2]]) / span
            distance[order[1:-1]] += gaps
    return distance


def rank_and_crowding(points: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(non-domination rank, crowding distance within its front) of every point."""
    costs = _costs(points)
    ranks = np.zeros(len(costs), dtype=int)
    crowding = np.zeros(len(costs))
    for rank, front in enumerate(non_dominated_sort(costs)):
        ranks[front] = rank
        crowding[front] = crowding_distance(costs[front])
    return ranks, crowding


# ---- hypervolume ----------------------------------------------------------------------------
def hypervolume(points: ArrayLike, reference: ArrayLike) -> float:
    """Volume of the region dominated by `points` and bounded by `reference` (costs).

    Points not strictly better than the reference in every objective add nothing. Exact:
    a sweep in 2-D (O(n log n)); in m > 2 dimensions, slicing along the last objective
    down to the 2-D sweep (HSO, O(n^(m-1) log n)), meant for small fronts.
    """
    ref = np.asarray(reference, dtype=float)
    costs = _costs(points)
    if costs.size == 0:
        return 0.0
    if ref.ndim != 1 or costs.shape[1] != ref.size:
        raise ValueError(f"reference of shape {ref.shape} for points of shape {costs.shape}")
    if not np.all(np.isfinite(costs)) or not np.all(np.isfinite(ref)):
        raise ValueError("hypervolume needs finite points and reference")
    inside = costs[np.all(costs < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(_hv(inside[pareto_mask(inside)], ref))


def _hv(costs: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of points that are all strictly inside the reference box."""
    m = costs.shape[1]
    if m == 1:
        return float(ref[0] - costs[:, 0].min())
    if m == 2:
        return _hv2(costs, ref)
    order = np.argsort(costs[:, -1], kind="stable")
    costs = costs[order]
    bounds = np.append(costs[1:, -1], ref[-1])
    volume = 0.0
    for i in range(len(costs)):
        thickness = bounds[i] - costs[i, -1]
        if thickness > 0:
            volume += thickness * _hv(costs[: i + 1, :-1], ref[:-1])
    return volume


def _hv2(costs: np.ndarray, ref: np.ndarray) -> float:
    order = np.lexsort((costs[:, 1], costs[:, 0]))
    area, floor = 0.0, ref[1]
    for x, y in costs[order]:
        if y < floor:
            area += (ref[0] - x) * (floor - y)
            floor = y
    return area


# ---- tables ---------------------------------------------------------------------------------
def table_costs(rows: Mapping[str, Mapping[str, float]],
                objectives: Sequence[tuple[str, str]]) -> tuple[list[str], np.ndarray]:
    """(keys, costs) of the rows that have a finite value in every objective column.

    `objectives` is a sequence of (column, mode) pairs.
    """
    columns = [column for column, _ in objectives]
    keys, values = [], []
    for key, row in rows.items():
        vector = [row.get(column) for column in columns]
        if all(v is not None and np.isfinite(v) for v in vector):
            keys.append(key)
            values.append(vector)
    costs = to_costs(np.asarray(values, dtype=float).reshape(len(values), len(columns)),
                     [mode for _, mode in objectives])
    return keys, costs


def table_front(rows: Mapping[str, Mapping[str, float]],
                objectives: Sequence[tuple[str, str]]) -> list[str]:
    """Keys of the true Pareto front of a table (rows lacking an objective are left out)."""
    keys, costs = table_costs(rows, objectives)
    return [key for key, keep in zip(keys, pareto_mask(costs), strict=True) if keep]
