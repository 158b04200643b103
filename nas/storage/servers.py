"""The registry of `nas serve` processes: registration, heartbeats (which also keep the
leases of the jobs a process runs live) and who is alive."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update

from ._area import Area, as_utc, utcnow
from ._retry import retried
from .schema import jobs, servers

#: A serve process is alive while its last heartbeat is within this many poll periods...
SERVER_ALIVE_POLLS = 3.0
#: ... and at least this many seconds: its heartbeat thread cannot beat while another thread
#: holds the interpreter, and `ray.init` does for 1.5 s at the end of connecting (measured
#: here; 2.2 s with the machine busy), so a serve connecting to Ray for a job it claimed
#: would look dead for a moment with `--poll-s 0.5`.
SERVER_ALIVE_MIN_S = 5.0
#: Serve rows silent for this long are dropped when another serve process starts.
SERVER_FORGET_S = 86400.0


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """A registered `nas serve` process, as `storage.servers.all()` reads it."""

    id: int
    name: str
    owner: str  # its lease owner id (`host:pid:random`)
    host: str
    pid: int
    poll_s: float
    max_jobs: int
    started_at: datetime
    heartbeat_at: datetime
    #: a heartbeat within `SERVER_ALIVE_POLLS` poll periods (at least `SERVER_ALIVE_MIN_S`)
    alive: bool
    #: the jobs it holds a live lease on, in id order
    jobs: tuple[int, ...]


class Servers(Area):
    """`storage.servers`: the serve processes sharing this database."""

    @retried()
    def register(self, name: str, owner: str, poll_s: float, max_jobs: int) -> None:
        """Add a serve process to the registry (and forget those silent for a day)."""
        now = utcnow()
        host, _, rest = owner.partition(":")
        with self.engine.begin() as conn:
            conn.execute(delete(servers).where(or_(
                servers.c.heartbeat_at < now - timedelta(seconds=SERVER_FORGET_S),
                servers.c.owner == owner)))  # a retry must not register it twice
            conn.execute(insert(servers).values(
                name=name, owner=owner, host=host, pid=int(rest.partition(":")[0]),
                poll_s=poll_s, max_jobs=max_jobs, started_at=now, heartbeat_at=now))

    @retried()
    def heartbeat(self, owner: str, job_ids: Sequence[int], ttl_s: float) -> bool:
        """Mark the serve process alive and extend the leases it holds on `job_ids` (the jobs
        it is running: their leases stay live even while a driver is still setting up).
        False when its registry row was gone (it is written again)."""
        now = utcnow()
        with self.engine.begin() as conn:
            found = conn.execute(update(servers).where(servers.c.owner == owner)
                                 .values(heartbeat_at=now)).rowcount
            if job_ids:
                conn.execute(update(jobs).where(jobs.c.id.in_(list(job_ids)),
                                                jobs.c.lease_owner == owner)
                             .values(lease_expires_at=now + timedelta(seconds=ttl_s)))
        return bool(found)

    @retried()
    def unregister(self, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(servers).where(servers.c.owner == owner))

    @retried()
    def all(self) -> list[ServerRecord]:
        """The registered serve processes, each with `alive` (a heartbeat within
        `SERVER_ALIVE_POLLS` poll periods, at least `SERVER_ALIVE_MIN_S`) and `jobs` (those it
        holds a live lease on)."""
        now = utcnow()
        with self.read() as conn:
            rows = conn.execute(select(servers).order_by(servers.c.id)).mappings().all()
            leases = conn.execute(select(jobs.c.lease_owner, jobs.c.id).where(
                jobs.c.lease_owner.in_([r["owner"] for r in rows]),
                jobs.c.lease_expires_at >= now).order_by(jobs.c.id)).all() if rows else []
        held: dict[str, list[int]] = {}
        for lease_owner, job_id in leases:
            held.setdefault(lease_owner, []).append(job_id)
        return [_server(row, now, tuple(held.get(row["owner"], ()))) for row in rows]

    def live(self) -> list[ServerRecord]:
        return [s for s in self.all() if s.alive]


def _server(row: Any, now: datetime, held: tuple[int, ...]) -> ServerRecord:
    heartbeat_at = as_utc(row["heartbeat_at"])
    silent = (now - heartbeat_at).total_seconds()
    return ServerRecord(
        id=row["id"], name=row["name"], owner=row["owner"], host=row["host"], pid=row["pid"],
        poll_s=row["poll_s"], max_jobs=row["max_jobs"], started_at=as_utc(row["started_at"]),
        heartbeat_at=heartbeat_at,
        alive=silent <= max(SERVER_ALIVE_POLLS * row["poll_s"], SERVER_ALIVE_MIN_S), jobs=held)
