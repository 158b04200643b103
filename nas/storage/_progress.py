"""How far each phase of a job has come (`job_progress`), so that any process can show it.

A job's phases: `pool` (the proxy pool: cells scored of the pool), `supernet` (a
weight-sharing search: epochs trained, the epoch's loss and accuracy in `detail`) and
`trials` (trials told of the budget, the best so far in `detail`). The driver writes them
(`nas.progress.ProgressWriter` throttles its writes and never lets one fail a search);
`nas status`, `nas submit --wait` and the dashboard read them with `job_progress`.

The rate, and so the ETA, counts the current driver session only: the first write of a
phase by a session (`restart=True`) sets `started_at` and `start_done` to now and to the
value it starts from, so a job paused overnight and resumed does not look slow.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import NasError
from ._area import as_utc, utcnow
from .schema import job_progress as table

#: The phases in the order a job goes through them (others sort after, by start).
PHASES = ("pool", "supernet", "trials")
MAX_PHASE = 32


@dataclass(frozen=True)
class PhaseProgress:
    """One phase of a job: `done` of `total` (None: open-ended, e.g. a seconds budget)."""

    phase: str
    done: int
    total: int | None
    #: done / total, in [0, 1]; None without a total
    fraction: float | None
    detail: dict[str, Any]
    started_at: datetime
    updated_at: datetime
    #: seconds left at the rate of the current session, as of `updated_at`; 0 once done,
    #: None without a total or before the session made any progress
    eta_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def set_progress(storage: Any, job_id: int, phase: str, done: int, total: int | None,
                 detail: dict[str, Any] | None = None, *, restart: bool = False) -> None:
    """Insert or update one phase of a job. `restart`: the phase's clock starts again here
    (a driver session's first write). Not retried: callers write often and must not wait
    out a database outage for it (`nas.progress.ProgressWriter` swallows the error)."""
    _check(phase, done, total)
    now = utcnow()
    dialect = postgresql if storage.dialect == "postgresql" else sqlite
    stmt = dialect.insert(table).values(
        job_id=job_id, phase=phase, done=int(done),
        total=None if total is None else int(total), detail=_clean(detail or {}),
        start_done=int(done), started_at=now, updated_at=now)
    changed = {name: stmt.excluded[name] for name in ("done", "total", "detail", "updated_at")}
    if restart:
        changed |= {name: stmt.excluded[name] for name in ("start_done", "started_at")}
    stmt = stmt.on_conflict_do_update(index_elements=[table.c.job_id, table.c.phase],
                                      set_=changed)
    with storage.engine.begin() as conn:
        conn.execute(stmt)


def job_progress(storage: Any, job_id: int) -> list[PhaseProgress]:
    """Every phase a job has recorded, in the order a job goes through them."""
    with storage.read() as conn:
        rows = list(conn.execute(select(table).where(table.c.job_id == job_id)).mappings())
    found = [_phase(row) for row in rows]
    order = {name: i for i, name in enumerate(PHASES)}
    return sorted(found, key=lambda p: (order.get(p.phase, len(PHASES)), p.started_at))


def _phase(row: Any) -> PhaseProgress:
    started, updated = as_utc(row["started_at"]), as_utc(row["updated_at"])
    done, total = int(row["done"]), row["total"]
    fraction = None if total is None else (1.0 if total <= 0 else min(1.0, done / total))
    return PhaseProgress(row["phase"], done, total, fraction, dict(row["detail"] or {}),
                         started, updated, _eta(done, total, int(row["start_done"]),
                                                (updated - started).total_seconds()))


def _eta(done: int, total: int | None, start_done: int, seconds: float) -> float | None:
    """Seconds left at the rate so far: (total - done) / ((done - start_done) / seconds)."""
    if total is None:
        return None
    if done >= total:
        return 0.0
    gained = done - start_done
    if gained <= 0 or seconds <= 0:
        return None
    return (total - done) * seconds / gained


def _check(phase: str, done: int, total: int | None) -> None:
    if not isinstance(phase, str) or not phase or len(phase) > MAX_PHASE:
        raise NasError(f"progress phase must be 1 to {MAX_PHASE} characters, got {phase!r}")
    if done < 0 or (total is not None and total < 0):
        raise NasError(f"progress of {phase!r} must not be negative, got {done}/{total}")


def _clean(value: Any) -> Any:
    """`value` as JSON the database takes: numpy numbers as Python ones, NaN and
    infinities as null (PostgreSQL's json refuses them)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers too
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None
