"""What every storage area (`jobs`, `trials`, `measurements`, `servers`) shares: the engine,
read connections, the dialect's insert-or-ignore, UTC timestamps and the architecture rows
that trials and measurements both refer to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from ._engine import read_connection
from .schema import architectures

#: Rows per `IN (...)` list: far below every backend's limit on bound parameters.
CHUNK = 500


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


@dataclass
class NewTrial:
    number: int
    key: str
    arch: dict[str, Any]


class Area:
    """One area of the database. `dialect` is what `@retried` needs to tell transient
    errors; `url` (password masked) is for messages."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self.dialect = engine.dialect.name

    def read(self) -> Connection:
        """A connection for reads (see `read_connection`); writes use `engine.begin()`."""
        return read_connection(self.engine)

    def insert_ignore(self, table):  # noqa: ANN001, ANN201
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    def architecture_ids(self, conn: Connection, space: str,
                         new: Sequence[NewTrial]) -> dict[str, int]:
        """The ids of the architectures of `new` in `space`, inserting those not stored."""
        keys = sorted({t.key for t in new})
        # rows in key order: two transactions writing the same architectures lock them in
        # the same order, so they wait for each other instead of deadlocking (PostgreSQL)
        rows = [{"space": space, "key": t.key, "arch": t.arch}
                for t in sorted(new, key=lambda t: t.key)]
        conn.execute(self.insert_ignore(architectures), rows)
        ids: dict[str, int] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start:start + CHUNK]
            ids.update(conn.execute(select(architectures.c.key, architectures.c.id).where(
                architectures.c.space == space, architectures.c.key.in_(chunk))).all())
        return ids
