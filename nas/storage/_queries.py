"""Read-side queries: best under a device budget, the Pareto front, one trial."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from ..errors import NasError
from ._retry import retried
from .schema import architectures, measurements, trial_device_values, trials

#: Under a budget, `best_trials` reads `trial_device_values` either down its score index
#: (checking each trial's value in the index: cheap when the budget is loose) or along its
#: value index (the trials within the budget, then the best of them: cheap when it is
#: tight). It counts the trials within the budget, stopping at RANGE_BELOW, and takes the
#: value index below that. PostgreSQL's planner makes the same choice from its statistics;
#: SQLite (no statistics unless ANALYZE ran) is steered. Tuned with bench/query.py.
RANGE_BELOW = 50_000


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


def _within_budget(job_id: int, device: str, metric: str, max_value: float,  # noqa: ANN202
                   feasible_only: bool, by_value: bool = False):
    """The job's scored trials (id, score, number) whose preferred value is within budget.
    `by_value`: order by `score + 0`, which no index can serve, so that SQLite reads the
    value index's range instead of walking the score index (its documented way of
    disqualifying an index)."""
    tdv = trial_device_values
    score = (tdv.c.score + 0).label("score") if by_value else tdv.c.score
    query = select(tdv.c.trial_id.label("id"), score, tdv.c.number).where(
        tdv.c.job_id == job_id, tdv.c.device == device, tdv.c.metric == metric,
        tdv.c.value <= max_value)
    return query.where(tdv.c.feasible.is_(True)) if feasible_only else query


def _count_within_budget(conn, query, limit: int) -> int:  # noqa: ANN001
    """How many rows `query` has, counting no further than `limit`."""
    capped = query.limit(limit).subquery()
    return conn.execute(select(func.count()).select_from(capped)).scalar_one()


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
        tdv = trial_device_values
        query = query.add_columns(tdv.c.value.label("device_value"),
                                  tdv.c.source.label("device_source")).outerjoin(
            tdv, (tdv.c.trial_id == trials.c.id) & (tdv.c.device == device) &
            (tdv.c.metric == metric))
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
        within = _within_budget(job_id, device, metric, max_value, feasible_only)
        if conn.dialect.name == "sqlite" and \
                _count_within_budget(conn, within, RANGE_BELOW) < RANGE_BELOW:
            within = _within_budget(job_id, device, metric, max_value, feasible_only,
                                    by_value=True)
        return _top_rows(conn, within, top, device, metric)


def check_job_device(storage, job_id: int, device: str,  # noqa: ANN001
                     metric: str = "latency_ms") -> None:
    """Refuse a device that is a typo: none of the job's trials has a `metric` value on it,
    no architecture in the database has one, and the job has values on other devices (named
    in the error; a typo would otherwise give an empty table). A job with no device value
    yet (pending, or just started) gets its empty answer, not an error."""
    tdv = trial_device_values
    mine = (tdv.c.job_id == job_id) & (tdv.c.metric == metric)
    anywhere = select(measurements.c.id).where(measurements.c.device == device,
                                               measurements.c.metric == metric).exists()
    with storage.read() as conn:
        if conn.execute(select(select(tdv.c.trial_id).where(
                mine, tdv.c.device == device).exists())).scalar():
            return
        devices = list(conn.execute(select(tdv.c.device).where(mine).distinct()
                                    .order_by(tdv.c.device)).scalars())
        if not devices or conn.execute(select(anywhere)).scalar():
            return
    known = ", ".join(devices)
    raise NasError(f"--device: job {job_id} has no {metric} value on device {device!r} "
                   f"(devices with values: {known})")


def unknown_measurement_count(storage, job_id: int, device: str,  # noqa: ANN001
                              metric: str = "latency_ms") -> int:
    """Completed trials with no measurement of `metric` on `device` (shown, never hidden).

    Counted as (scored completed trials) - (their rows in `trial_device_values`, which has
    one per scored trial with a value) + (unscored completed trials without a measurement):
    two index-only counts and a small remainder, where asking "no measurement?" of every
    trial took half a second at 10^5 trials on SQLite."""
    tdv = trial_device_values
    completed = (trials.c.job_id == job_id) & (trials.c.status == "completed")
    scored = select(func.count()).select_from(trials).where(
        completed, trials.c.score.is_not(None))
    with_value = select(func.count()).select_from(tdv).where(
        tdv.c.job_id == job_id, tdv.c.device == device, tdv.c.metric == metric)
    measured = select(measurements.c.id).where(
        measurements.c.architecture_id == trials.c.architecture_id,
        measurements.c.device == device, measurements.c.metric == metric).exists()
    unscored_unknown = select(func.count()).select_from(trials).where(
        completed, trials.c.score.is_(None), ~measured)
    with storage.read() as conn:
        return int(conn.execute(scored).scalar_one() - conn.execute(with_value).scalar_one()
                   + conn.execute(unscored_unknown).scalar_one())


def trials_with_device_value(storage, job_id: int, device: str,  # noqa: ANN001
                             metric: str = "latency_ms") -> list[dict[str, Any]]:
    """Completed, scored trials that have a `metric` value on `device` (preferred source)."""
    tdv = trial_device_values
    query = (
        select(*_trial_columns(), tdv.c.value.label("device_value"),
               tdv.c.source.label("device_source"))
        .select_from(tdv.join(trials, trials.c.id == tdv.c.trial_id)
                     .join(architectures, architectures.c.id == trials.c.architecture_id))
        .where(tdv.c.job_id == job_id, tdv.c.device == device, tdv.c.metric == metric)
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


@retried()
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


@retried()
def stored_values(storage, space: str, keys: list[str], device: str,  # noqa: ANN001
                  ) -> dict[str, dict[str, float]]:
    """The preferred stored value of every metric of one `device` (e.g. an evaluator's
    cache device) for some architectures: key -> metric -> value."""
    found: dict[str, dict[str, float]] = {}
    with storage.read() as conn:
        for start in range(0, len(keys), 500):
            query = (select(architectures.c.key, measurements.c.metric, measurements.c.value)
                     .join(measurements, measurements.c.architecture_id == architectures.c.id)
                     .where(architectures.c.space == space,
                            architectures.c.key.in_(keys[start:start + 500]),
                            measurements.c.device == device)
                     .order_by(measurements.c.source_rank.desc()))
            for key, metric, value in conn.execute(query):
                found.setdefault(key, {})[metric] = float(value)
    return found
