"""Keeping `trial_device_values` in step with `trials` and `measurements`.

A row holds the preferred value of one device metric of one completed, scored trial. It
changes when a trial gets its result and when a measurement of its architecture is added or
replaced; `refresh_device_values` rewrites the rows of the trials concerned from the source
tables, so the copy can never drift: whatever the order of writes, the rows equal what a
full rebuild computes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select

from .schema import measurements, trial_device_values, trials

#: Ids per statement (SQLite allows 32,766 bound parameters; keep statements small).
_CHUNK = 500


def refresh_device_values(conn: Connection, *, trial_ids: Iterable[int] | None = None,
                          architecture_ids: Iterable[int] | None = None) -> None:
    """Rewrite the rows of some trials (by id, or all trials of some architectures); with
    neither given, of every trial (a rebuild)."""
    if trial_ids is None and architecture_ids is None:
        conn.execute(delete(trial_device_values))
        conn.execute(_insert_preferred())
        return
    column = trials.c.id if trial_ids is not None else trials.c.architecture_id
    ids = sorted(set(trial_ids if trial_ids is not None else architecture_ids or ()))
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        affected = select(trials.c.id).where(column.in_(chunk))
        conn.execute(delete(trial_device_values).where(
            trial_device_values.c.trial_id.in_(affected)))
        archs = select(trials.c.architecture_id).where(column.in_(chunk))
        conn.execute(_insert_preferred(column.in_(chunk),
                                       measured=measurements.c.architecture_id.in_(archs)))


def _insert_preferred(*where: Any, measured: Any = None) -> Any:
    """INSERT ... SELECT of the preferred measurement of each scored trial matching `where`
    (`measured` narrows the measurements ranked to those trials' architectures)."""
    ranked = select(
        measurements.c.architecture_id, measurements.c.device, measurements.c.metric,
        measurements.c.value, measurements.c.source,
        func.row_number().over(
            partition_by=(measurements.c.architecture_id, measurements.c.device,
                          measurements.c.metric),
            order_by=measurements.c.source_rank).label("preference"),
    )
    if measured is not None:
        ranked = ranked.where(measured)
    ranked = ranked.subquery("ranked")
    rows = (select(trials.c.id, ranked.c.device, ranked.c.metric, trials.c.job_id,
                   trials.c.score, trials.c.number, trials.c.feasible, ranked.c.value,
                   ranked.c.source)
            .join(ranked, ranked.c.architecture_id == trials.c.architecture_id)
            .where(ranked.c.preference == 1, trials.c.status == "completed",
                   trials.c.score.is_not(None), *where))
    columns = ["trial_id", "device", "metric", "job_id", "score", "number", "feasible",
               "value", "source"]
    return insert(trial_device_values).from_select(columns, rows)
