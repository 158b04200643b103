"""One page of a job's trials, filtered, sorted and paginated in SQL: the query behind
`nas trials`, `Job.trials(...)` and the dashboard's trials table.

Only the page's ids are sorted over the whole job (an index range of `trials`, plus the
sort key: a column, or a number read from the trial's metrics/objectives JSON with
SQLite's `json_extract` or PostgreSQL's `->>`); the page's full rows are then read by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, or_, select, text

from ..errors import NasError
from ._area import as_utc
from ._retry import retried
from .schema import TRIAL_STATUSES, architectures, measurements, trials

_CHUNK = 500
MAX_ID = 2**31 - 1  # job ids are 32-bit integer columns
#: Sort keys every job has; any other key is an objective or a metric of the job.
BUILTIN_SORTS = ("number", "score", "duration")


@dataclass(frozen=True)
class TrialsPage:
    """`rows`: the page, each a `nas.results.trial_json` object plus status, attempt, worker,
    started_at, finished_at, duration_s and error (full text); `total`: how many trials
    match the status filter (all pages); `sort`/`descending`: the order used."""

    rows: list[dict[str, Any]]
    total: int
    sort: str = "score"
    descending: bool = True


def _number_in(column: Any, key: str | int, dialect: str) -> Any:
    """The JSON value `column[key]` as a float where it is a number, else NULL (a missing
    key, a JSON null, or a value of another type: never a cast error)."""
    if dialect == "postgresql":
        return case((func.json_typeof(column[key]) == "number", column[key].as_float()))
    path = f"$[{key}]" if isinstance(key, int) else f'$."{key}"'
    return case((func.json_type(column, path).in_(("integer", "real")),
                 func.json_extract(column, path)))


def _duration(dialect: str) -> Any:
    """finished_at - started_at in seconds (NULL while either is unknown)."""
    if dialect == "postgresql":
        return func.extract("epoch", trials.c.finished_at - trials.c.started_at)
    # to the millisecond: julianday's float days leave noise in the microseconds
    days = func.julianday(trials.c.finished_at) - func.julianday(trials.c.started_at)
    return func.round(days * 86400.0, 3)


def _metric_exists(conn: Any, job_id: int, name: str, dialect: str) -> bool:
    if "\x00" in name or '"' in name:  # not in a JSON path (SQLite) or a parameter (PG)
        return False
    found = select(trials.c.id).where(
        trials.c.job_id == job_id, _number_in(trials.c.metrics, name, dialect).is_not(None))
    return bool(conn.execute(select(found.exists())).scalar())


def _metric_names(conn: Any, job_id: int, dialect: str) -> list[str]:
    """Every key of the job's trials' metrics (for the message about an unknown one)."""
    if dialect == "postgresql":
        query = text("SELECT DISTINCT json_object_keys(metrics) FROM trials "
                     "WHERE job_id = :job AND json_typeof(metrics) = 'object'")
    else:
        query = text("SELECT DISTINCT j.key FROM trials, json_each(trials.metrics) AS j "
                     "WHERE trials.job_id = :job AND j.key IS NOT NULL")
    return sorted(conn.execute(query, {"job": job_id}).scalars())


def _sort_key(conn: Any, job_id: int, spec: dict[str, Any], sort: str,
              dialect: str) -> tuple[Any, bool]:
    """(SQL expression, default descending) of a sort key: number (ascending), score and
    duration (largest first), an objective (its best first, by its mode), or a metric
    (largest first)."""
    if sort == "number":
        return trials.c.number, False
    if sort == "score":
        return trials.c.score, True
    if sort == "duration":
        return _duration(dialect), True
    objectives = [o["metric"] for o in spec["objectives"]]
    if sort in objectives:
        index = objectives.index(sort)
        return (_number_in(trials.c.objectives, index, dialect),
                spec["objectives"][index].get("mode", "max") == "max")
    if _metric_exists(conn, job_id, sort, dialect):
        return _number_in(trials.c.metrics, sort, dialect), True
    known = [*BUILTIN_SORTS, *objectives]
    known += [m for m in _metric_names(conn, job_id, dialect) if m not in known]
    raise NasError(f"--sort: job {job_id} has no metric {sort!r} (available: "
                   f"{', '.join(known)})")


def _check_page(status: str | None, limit: int, offset: int) -> None:
    if status is not None and status not in TRIAL_STATUSES:
        raise NasError(f"--status must be one of {'|'.join(TRIAL_STATUSES)}, got {status!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise NasError(f"--limit must be at least 1, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise NasError(f"--offset must be 0 or more, got {offset!r}")


def _page_columns() -> list[Any]:
    return [trials.c.id, trials.c.number, trials.c.status, trials.c.score, trials.c.metrics,
            trials.c.objectives, trials.c.feasible, trials.c.error, trials.c.attempt,
            trials.c.worker, trials.c.started_at, trials.c.finished_at, architectures.c.key,
            architectures.c.arch, architectures.c.params, architectures.c.flops]


def _ids_by_score(conn: Any, job_id: int, status: str | None, descending: bool, limit: int,
                  offset: int) -> list[int]:
    """A page of ids by score, then number: the scored trials, read in order along the index
    (job_id, status, score, number), then the others by number. Only completed trials have
    a score (the driver's `score_result`), so this is the order of `score NULLS LAST,
    number`, without sorting the whole job (the first page reads 50 index entries)."""
    ids: list[int] = []
    if status in (None, "completed"):
        score = trials.c.score.desc() if descending else trials.c.score.asc()
        scored = [trials.c.job_id == job_id, trials.c.status == "completed",
                  trials.c.score.is_not(None)]
        ids = list(conn.execute(select(trials.c.id).where(*scored)
                                .order_by(score, trials.c.number)
                                .limit(limit).offset(offset)).scalars())
        if len(ids) == limit:
            return ids
        offset = max(0, offset - conn.execute(
            select(func.count()).select_from(trials).where(*scored)).scalar_one())
    # the rest (a scored trial in another state, were there one, too: never lost)
    unscored = [trials.c.job_id == job_id,
                or_(trials.c.status != "completed", trials.c.score.is_(None))]
    if status is not None:
        unscored.append(trials.c.status == status)
    return ids + list(conn.execute(select(trials.c.id).where(*unscored)
                                   .order_by(trials.c.number)
                                   .limit(limit - len(ids)).offset(offset)).scalars())


def _rows_by_id(conn: Any, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The page's full rows, read by id (in chunks: SQLite bounds a query's parameters)."""
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), _CHUNK):
        query = (select(*_page_columns())
                 .join(architectures, architectures.c.id == trials.c.architecture_id)
                 .where(trials.c.id.in_(ids[start:start + _CHUNK])))
        found.update((r["id"], dict(r)) for r in conn.execute(query).mappings())
    return found


def _page_row(row: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    from ..results import trial_json  # nas.results imports this package

    data = trial_json(row, spec)
    started, finished = as_utc(row["started_at"]), as_utc(row["finished_at"])
    duration = (finished - started).total_seconds() if started and finished else None
    return {"trial": data.pop("trial"), "status": row["status"], **data,
            "attempt": row["attempt"], "worker": row["worker"], "started_at": started,
            "finished_at": finished, "duration_s": duration, "error": row["error"]}


@retried()
def trials_page(storage, job_id: int, *, status: str | None = None,  # noqa: ANN001
                sort: str = "score", descending: bool | None = None, limit: int = 50,
                offset: int = 0) -> TrialsPage:
    """One page of a job's trials: those with `status` (all when None), ordered by `sort`
    (`number`, `score`, `duration`, an objective or a metric name; trials without a value
    last in either direction, then by number), `limit` of them from `offset`.
    `descending=None`: the key's natural order (best score first, number ascending, ...).
    NasError for an unknown job, status or sort key, or a bad limit/offset."""
    _check_page(status, limit, offset)
    if isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id <= MAX_ID:
        raise NasError(f"JOB must be a positive job id, got {job_id!r}")
    spec = storage.jobs.get(job_id).spec
    where = [trials.c.job_id == job_id]
    if status is not None:
        where.append(trials.c.status == status)
    with storage.read() as conn:
        key, natural = _sort_key(conn, job_id, spec, sort, storage.dialect)
        descending = natural if descending is None else bool(descending)
        primary = spec["objectives"][0]
        if sort in ("score", primary["metric"]):  # the score orders the primary objective
            flip = sort != "score" and primary.get("mode", "max") == "min"
            ids = _ids_by_score(conn, job_id, status, descending != flip, limit, offset)
        else:
            ordered = key.desc() if descending else key.asc()
            tie = trials.c.number.desc() if descending and sort == "number" else trials.c.number
            ids = list(conn.execute(select(trials.c.id).where(*where)
                                    .order_by(ordered.nulls_last(), tie)
                                    .limit(limit).offset(offset)).scalars())
        total = conn.execute(select(func.count()).select_from(trials).where(*where)).scalar_one()
        found = _rows_by_id(conn, ids)
    return TrialsPage(rows=[_page_row(found[i], spec) for i in ids if i in found],
                      total=int(total), sort=sort, descending=descending)


@retried()
def measured_device_metrics(storage, job_id: int, number: int) -> set[tuple[str, str]]:  # noqa: ANN001
    """The (device, metric) pairs a trial's architecture has a stored value for, from any
    source."""
    architecture = select(trials.c.architecture_id).where(
        trials.c.job_id == job_id, trials.c.number == number).scalar_subquery()
    query = select(measurements.c.device, measurements.c.metric).where(
        measurements.c.architecture_id == architecture).distinct()
    with storage.read() as conn:
        return {(device, metric) for device, metric in conn.execute(query)}
