"""Read-side queries: best under a device budget, the Pareto front, one trial."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

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


def _trial_columns() -> list[Any]:
    return [trials.c.number, trials.c.status, trials.c.score, trials.c.metrics,
            trials.c.objectives, trials.c.feasible, trials.c.error, trials.c.attempt,
            trials.c.worker, architectures.c.key, architectures.c.arch,
            architectures.c.params, architectures.c.flops]


def best_trials(storage, job_id: int, top: int = 5, device: str | None = None,  # noqa: ANN001
                max_value: float | None = None, metric: str = "latency_ms",
                feasible_only: bool = False) -> list[dict[str, Any]]:
    """Top completed trials by the primary objective, optionally under a device budget."""
    if top < 1:
        raise NasError(f"--top must be at least 1, got {top}")
    columns = _trial_columns()
    query = select(*columns).join(architectures,
                                  architectures.c.id == trials.c.architecture_id)
    if device is not None:
        value = _preferred(measurements.c.value, device, metric)
        source = _preferred(measurements.c.source, device, metric)
        query = query.add_columns(value.label("device_value"), source.label("device_source"))
        if max_value is not None:
            query = query.where(value <= max_value)
    query = query.where(trials.c.job_id == job_id, trials.c.status == "completed",
                        trials.c.score.is_not(None))
    if feasible_only:
        query = query.where(trials.c.feasible.is_(True))
    query = query.order_by(trials.c.score.desc(), trials.c.number).limit(top)
    with storage.read() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


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
