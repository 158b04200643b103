"""Read-side queries: best under a device budget, the Pareto front, one trial."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select

from ..errors import NasError
from .schema import architectures, measurements, trials


def _preferred(column, device: str, metric: str):  # noqa: ANN001, ANN202
    """Scalar subquery: the measurement of the trial's architecture from the best source."""
    return (
        select(column)
        .where(measurements.c.architecture_id == trials.c.architecture_id,
               measurements.c.device == device, measurements.c.metric == metric)
        .order_by(measurements.c.source_rank)
        .limit(1)
        .correlate(trials)
        .scalar_subquery()
    )


#: How `best_trials` finds the best trials under a device budget, cheapest way first:
#: 1. walking down the score index, checking each trial's preferred measurement, as far as
#:    the job's WALK_FIRST-th best trial (enough when the budget is loose);
#: 2. when the budget admits fewer than CANDIDATES_BELOW measurements (an index-only count
#:    on ix_measurements_device_value that stops at the limit), from the architectures
#:    within it: PostgreSQL looks up each one's trial in the job; SQLite walks the score
#:    index with their list at hand, or below LOOK_UP_BELOW looks them up too;
#: 3. else on down the whole score index.
#: Tuned with bench/query.py (10^5 and 10^6 trials): the walk costs about 3 us a trial on
#: SQLite and 7 us on PostgreSQL, a look-up about 4 and 5 us a candidate, SQLite's walk
#: with the list under 1 us a trial.
WALK_FIRST = {"sqlite": 1_000, "postgresql": 5_000}
CANDIDATES_BELOW = {"sqlite": 100_000, "postgresql": 50_000}
LOOK_UP_BELOW = {"sqlite": 20_000}
#: In way 2 the candidates are architectures with any measurement within the budget; the
#: preferred one is checked on the best `top + CHECK_SLACK` of them only.
CHECK_SLACK = 20


def _within_budget(device: str, metric: str, max_value: float):  # noqa: ANN202
    """Architectures with any `metric` measurement on `device` within the budget: a superset
    of those whose preferred measurement is (the exact check stays in the query)."""
    return select(measurements.c.architecture_id).where(
        measurements.c.device == device, measurements.c.metric == metric,
        measurements.c.value <= max_value)


def _count_within_budget(conn, device: str, metric: str, max_value: float,  # noqa: ANN001
                         limit: int) -> int:
    """How many measurements are within the budget, counting no further than `limit`."""
    capped = _within_budget(device, metric, max_value).limit(limit).subquery()
    return conn.execute(select(func.count()).select_from(capped)).scalar_one()


def _trial_columns() -> list[Any]:
    return [trials.c.number, trials.c.status, trials.c.score, trials.c.metrics,
            trials.c.objectives, trials.c.feasible, trials.c.error, trials.c.attempt,
            trials.c.worker, architectures.c.key, architectures.c.arch,
            architectures.c.params, architectures.c.flops]


def _candidates(job_id: int, feasible_only: bool):  # noqa: ANN202
    """The job's completed trials (id, score, number, architecture), unordered."""
    query = select(trials.c.id, trials.c.score, trials.c.number, trials.c.architecture_id) \
        .where(trials.c.job_id == job_id, trials.c.status == "completed",
               trials.c.score.is_not(None))
    return query.where(trials.c.feasible.is_(True)) if feasible_only else query


def _top_rows(conn, ranked, top: int, device: str | None,  # noqa: ANN001
              metric: str) -> list[dict[str, Any]]:
    """The full rows of the `top` best of `ranked` (a select of id, score, number): the ids
    first, so the walk down the score index stops early, then their columns."""
    best = ranked.order_by(ranked.selected_columns.score.desc(),
                           ranked.selected_columns.number).limit(top).subquery("ranked")
    query = (select(*_trial_columns())
             .select_from(best.join(trials, trials.c.id == best.c.id)
                          .join(architectures, architectures.c.id == trials.c.architecture_id))
             .order_by(best.c.score.desc(), best.c.number))
    if device is not None:
        query = query.add_columns(
            _preferred(measurements.c.value, device, metric).label("device_value"),
            _preferred(measurements.c.source, device, metric).label("device_source"))
    return [dict(r) for r in conn.execute(query).mappings()]


def best_trials(storage, job_id: int, top: int = 5, device: str | None = None,  # noqa: ANN001
                max_value: float | None = None, metric: str = "latency_ms",
                feasible_only: bool = False) -> list[dict[str, Any]]:
    """Top completed trials by the primary objective, optionally under a device budget."""
    if top < 1:
        raise NasError(f"--top must be at least 1, got {top}")
    with storage.read() as conn:
        if device is None or max_value is None:
            return _top_rows(conn, _candidates(job_id, feasible_only), top, device, metric)

        def within(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in rows
                    if r["device_value"] is not None and r["device_value"] <= max_value]

        dialect = conn.dialect.name
        ranked = _candidates(job_id, feasible_only).with_only_columns(
            trials.c.id, trials.c.score, trials.c.number)

        def walk(count: int, *where: Any) -> list[dict[str, Any]]:
            """The best `count` trials within the budget, walking down the score index."""
            query = ranked.where(*where, _preferred(measurements.c.value, device, metric)
                                 <= max_value)
            return _top_rows(conn, query, count, device, metric)

        # 1. the walk down the score index as far as the job's WALK_FIRST-th best trial
        last = conn.execute(ranked.with_only_columns(trials.c.score, trials.c.number).order_by(
            trials.c.score.desc(), trials.c.number).offset(
                WALK_FIRST.get(dialect, 1_000) - 1).limit(1)).first()
        if last is None:  # a small job: the walk is short
            return walk(top)
        rows = walk(top, trials.c.score >= last.score,
                    or_(trials.c.score > last.score, trials.c.number <= last.number))
        if len(rows) == top:  # every other trial ranks below them
            return rows
        limit = CANDIDATES_BELOW.get(dialect, 0)
        admitted = _count_within_budget(conn, device, metric, max_value, limit)
        if admitted < limit:
            # 2. from the architectures with a measurement within the budget (the preferred
            # measurement decides: checked on the best few of them)
            if admitted < LOOK_UP_BELOW.get(dialect, 0):
                within_budget = _within_budget(device, metric, max_value).distinct().cte(
                    "within_budget").prefix_with("MATERIALIZED")
                looked_up = ranked.where(
                    trials.c.architecture_id == within_budget.c.architecture_id,
                ).cte("candidate_trials").prefix_with("MATERIALIZED")
                candidates = select(looked_up.c.id, looked_up.c.score, looked_up.c.number)
            else:
                within_budget = _within_budget(device, metric, max_value).cte(
                    "within_budget").prefix_with("MATERIALIZED")
                candidates = ranked.where(trials.c.architecture_id.in_(
                    select(within_budget.c.architecture_id)))
            found = _top_rows(conn, candidates, top + CHECK_SLACK, device, metric)
            if len(within(found)) >= top or len(found) < top + CHECK_SLACK:
                return within(found)[:top]
        # 3. (or when many candidates' preferred measurements are over the budget) the walk
        # goes on down the score index
        return rows + walk(top - len(rows), trials.c.score <= last.score,
                           or_(trials.c.score < last.score, trials.c.number > last.number))


def unknown_measurement_count(storage, job_id: int, device: str,  # noqa: ANN001
                              metric: str = "latency_ms") -> int:
    """Completed trials with no measurement of `metric` on `device` (shown, never hidden)."""
    known = select(measurements.c.id).where(
        measurements.c.architecture_id == trials.c.architecture_id,
        measurements.c.device == device, measurements.c.metric == metric).exists()
    query = select(func.count()).select_from(trials).where(
        trials.c.job_id == job_id, trials.c.status == "completed", ~known)
    with storage.read() as conn:
        return int(conn.execute(query).scalar_one())


def trials_with_device_value(storage, job_id: int, device: str,  # noqa: ANN001
                             metric: str = "latency_ms") -> list[dict[str, Any]]:
    """Completed trials that have a `metric` measurement on `device` (preferred source)."""
    value = _preferred(measurements.c.value, device, metric)
    source = _preferred(measurements.c.source, device, metric)
    query = (
        select(*_trial_columns(), value.label("device_value"), source.label("device_source"))
        .join(architectures, architectures.c.id == trials.c.architecture_id)
        .where(trials.c.job_id == job_id, trials.c.status == "completed",
               trials.c.score.is_not(None), value.is_not(None))
    )
    with storage.read() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-dominated rows: higher `score`, lower `device_value`; sorted by device value."""
    ordered = sorted(rows, key=lambda r: (r["device_value"], -r["score"], r["number"]))
    front, best = [], float("-inf")
    for row in ordered:
        if row["score"] > best:
            front.append(row)
            best = row["score"]
    return front


def get_trial(storage, job_id: int, number: int) -> dict[str, Any]:  # noqa: ANN001
    query = (select(*_trial_columns())
             .join(architectures, architectures.c.id == trials.c.architecture_id)
             .where(trials.c.job_id == job_id, trials.c.number == number))
    with storage.read() as conn:
        row = conn.execute(query).mappings().first()
    if row is None:
        raise NasError(f"job {job_id} has no trial {number}")
    return dict(row)


def preferred_device_values(storage, space: str, device: str,  # noqa: ANN001
                            metric: str) -> dict[str, tuple[float, int]]:
    """Every stored value of one device metric in a space, by architecture key, from the
    preferred source (measured < imported < benchmark < predicted): (value, source rank)."""
    query = (select(architectures.c.key, measurements.c.value, measurements.c.source_rank)
             .join(measurements, measurements.c.architecture_id == architectures.c.id)
             .where(architectures.c.space == space, measurements.c.device == device,
                    measurements.c.metric == metric)
             .order_by(measurements.c.source_rank.desc()))
    with storage.read() as conn:
        return {key: (float(value), rank) for key, value, rank in conn.execute(query)}


def device_measurements(storage, architecture_keys: list[str], space: str,  # noqa: ANN001
                        ) -> dict[str, list[dict[str, Any]]]:
    """All stored measurements of some architectures, by key."""
    query = (select(architectures.c.key, measurements.c.device, measurements.c.metric,
                    measurements.c.value, measurements.c.source)
             .join(measurements, measurements.c.architecture_id == architectures.c.id)
             .where(architectures.c.space == space, architectures.c.key.in_(architecture_keys))
             .order_by(measurements.c.device, measurements.c.metric, measurements.c.source_rank))
    found: dict[str, list[dict[str, Any]]] = {}
    with storage.read() as conn:
        for row in conn.execute(query).mappings():
            found.setdefault(row["key"], []).append(
                {k: row[k] for k in ("device", "metric", "value", "source")})
    return found
