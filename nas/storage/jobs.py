"""Jobs: their rows, status and user code, cancel requests, leases (one driver per job),
`nas serve`'s atomic claims, and artifacts."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update

from ..errors import LeaseHeldError, NasError
from ._area import Area, as_utc, utcnow
from ._retry import retried
from .schema import artifacts, jobs, trials

#: Job statuses `nas serve` claims: queued jobs, and running jobs whose lease expired (their
#: driver died). Paused, failed and cancelled jobs wait for `nas resume`.
CLAIMABLE = ("pending", "running")


def new_owner() -> str:
    """A lease owner id naming this host and process: `host:pid:random`."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_is_dead_here(owner: str) -> bool:
    """A lease held by a process of this host that no longer exists can be taken now."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job's row, as `storage.jobs.get(id)` reads it (times in UTC)."""

    id: int
    name: str
    spec: dict[str, Any]  # the validated job spec, as submitted
    status: str  # pending | running | paused | completed | failed | cancelled
    seed: int
    created_at: datetime
    updated_at: datetime
    lease_owner: str | None  # the driver or serve process running it (`new_owner()`)
    lease_expires_at: datetime | None
    strategy_state: dict[str, Any] | None  # the strategy's last snapshot ...
    snapshot_told: int  # ... after it was told this many results
    snapshot_asked: int  # ... and asked for this many architectures
    elapsed_s: float  # search time so far, over every driver session
    cancel_requested: bool
    note: str | None  # the note its driver left with its last status
    error: str | None
    code: dict[str, Any] | None  # the user code it runs (`nas.code_check`)


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job as `storage.jobs.all()` lists it: its row's headline and its trial counts."""

    id: int
    name: str
    status: str
    created_at: datetime
    spec: dict[str, Any]
    trials: dict[str, int]  # status -> count; statuses without trials are absent


class Jobs(Area):
    """`storage.jobs`: a job's row and who may run it."""

    def create(self, spec: dict[str, Any], name: str, seed: int) -> int:
        now = utcnow()
        with self.engine.begin() as conn:
            return conn.execute(
                insert(jobs).returning(jobs.c.id),
                {"name": name, "spec": spec, "status": "pending", "seed": seed,
                 "created_at": now, "updated_at": now, "snapshot_told": 0,
                 "snapshot_asked": 0, "elapsed_s": 0.0, "cancel_requested": False},
            ).scalar_one()

    @retried()
    def get(self, job_id: int) -> JobRecord:
        with self.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise NasError(f"no job {job_id} in {self.url}")
        times = {column: as_utc(row[column])
                 for column in ("created_at", "updated_at", "lease_expires_at")}
        return JobRecord(**{**row, **times})

    @retried()
    def all(self) -> list[JobSummary]:
        """Every job, oldest first, with its trial counts by status."""
        counts = (
            select(trials.c.job_id, trials.c.status, func.count().label("n"))
            .group_by(trials.c.job_id, trials.c.status)
        )
        with self.read() as conn:
            rows = conn.execute(select(jobs.c.id, jobs.c.name, jobs.c.status, jobs.c.created_at,
                                       jobs.c.spec).order_by(jobs.c.id)).mappings().all()
            per_job: dict[int, dict[str, int]] = {}
            for job_id, status, n in conn.execute(counts):
                per_job.setdefault(job_id, {})[status] = n
        return [JobSummary(id=r["id"], name=r["name"], status=r["status"],
                           created_at=as_utc(r["created_at"]), spec=r["spec"],
                           trials=per_job.get(r["id"], {})) for r in rows]

    @retried()
    def set_status(self, job_id: int, status: str, *, error: str | None = None,
                   note: str | None = None, owner: str | None = None) -> None:
        """Set the job's status; with `owner`, also release that driver's lease."""
        values: dict[str, Any] = {"status": status, "updated_at": utcnow(), "error": error}
        if note is not None:
            values["note"] = note
        if owner is not None:
            values.update(lease_owner=None, lease_expires_at=None)
        condition = jobs.c.id == job_id
        if owner is not None:
            condition = and_(condition, jobs.c.lease_owner == owner)
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(condition).values(**values))

    @retried()
    def set_code(self, job_id: int, code: dict[str, Any] | None) -> None:
        """Record the user code the job runs (`jobs.code`, see `nas.code_check`)."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id)
                         .values(code=code, updated_at=utcnow()))

    def request_cancel(self, job_id: int) -> str:
        """Cancel a job: at once if no driver runs it, else the driver stops at its next
        heartbeat. Returns the status the job has now."""
        job = self.get(job_id)
        if job.status in ("completed", "failed", "cancelled"):
            raise NasError(f"job {job_id} is already {job.status}")
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id)
                         .values(cancel_requested=True, updated_at=now))
            holder = conn.execute(select(jobs.c.lease_owner).where(
                jobs.c.id == job_id, jobs.c.lease_owner.is_not(None),
                jobs.c.lease_expires_at >= now)).scalar()
            # a driver that died on this host never sees the request: cancel now
            live = holder is not None and not owner_is_dead_here(holder)
            if not live:
                conn.execute(update(jobs).where(jobs.c.id == job_id)
                             .values(status="cancelled", lease_owner=None,
                                     lease_expires_at=None))
        return "cancelling" if live else "cancelled"

    @retried()
    def acquire_lease(self, job_id: int, owner: str, ttl_s: float) -> None:
        """Take the job's lease, or raise LeaseHeldError naming the live holder."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl_s)
        with self.engine.begin() as conn:
            taken = conn.execute(update(jobs).where(
                jobs.c.id == job_id,
                or_(jobs.c.lease_owner.is_(None), jobs.c.lease_owner == owner,
                    jobs.c.lease_expires_at < now),
            ).values(lease_owner=owner, lease_expires_at=expires, updated_at=now)).rowcount
            if taken:
                return
            holder, until = conn.execute(select(jobs.c.lease_owner, jobs.c.lease_expires_at)
                                         .where(jobs.c.id == job_id)).one()
            # PostgreSQL: the holder may have released it since the UPDATE (holder None)
            if holder is None or owner_is_dead_here(holder):
                same = jobs.c.lease_owner.is_(None) if holder is None \
                    else jobs.c.lease_owner == holder
                taken = conn.execute(update(jobs).where(jobs.c.id == job_id, same).values(
                    lease_owner=owner, lease_expires_at=expires, updated_at=now)).rowcount
                if taken:
                    return
        left = (as_utc(until) - now).total_seconds() if until is not None else 0.0
        raise LeaseHeldError(
            f"job {job_id} is being run by driver {holder} (lease live for another "
            f"{left:.0f}s); refusing to run it twice")

    @retried()
    def heartbeat(self, job_id: int, owner: str, ttl_s: float, elapsed_s: float) -> bool:
        """Extend the lease; False if it was lost (another driver took over)."""
        now = utcnow()
        with self.engine.begin() as conn:
            return bool(conn.execute(update(jobs).where(
                jobs.c.id == job_id, jobs.c.lease_owner == owner,
            ).values(lease_expires_at=now + timedelta(seconds=ttl_s), updated_at=now,
                     elapsed_s=elapsed_s)).rowcount)

    @retried()
    def cancel_requested(self, job_id: int) -> bool:
        with self.read() as conn:
            return bool(conn.execute(select(jobs.c.cancel_requested)
                                     .where(jobs.c.id == job_id)).scalar_one())

    @retried()
    def start_running(self, job_id: int, owner: str) -> None:
        """Mark the job running. A pending cancel request is kept, whatever the job's status:
        only `reopen` (the user's `nas resume`) withdraws one, so a cancel that arrives
        between a resume or a claim and the driver's start still stops the job."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
                         .values(status="running", error=None, updated_at=utcnow()))

    @retried()
    def release_leases(self, owner: str, job_id: int | None = None) -> int:
        """Drop the leases `owner` still holds (on `job_id`, or on every job): a serve process
        stopping, or a driver that ended without releasing its lease. The jobs become
        claimable at once instead of after their lease expires. Returns how many."""
        condition = jobs.c.lease_owner == owner
        if job_id is not None:
            condition = and_(condition, jobs.c.id == job_id)
        with self.engine.begin() as conn:
            return conn.execute(update(jobs).where(condition).values(
                lease_owner=None, lease_expires_at=None, updated_at=utcnow())).rowcount

    # ---- `nas serve`: atomic job claims -------------------------------------------------------
    @staticmethod
    def _claimable(now: datetime):  # noqa: ANN205
        return and_(jobs.c.status.in_(CLAIMABLE),
                    or_(jobs.c.lease_owner.is_(None), jobs.c.lease_expires_at.is_(None),
                        jobs.c.lease_expires_at < now))

    @retried(replay_arg=True)
    def claim(self, owner: str, ttl_s: float, running: Sequence[int] = (), *,
                  replay: bool = False) -> int | None:
        """Take the lease of the oldest claimable job (see `CLAIMABLE`, lease free or expired)
        for `owner`; returns its id, or None when there is none. Atomic across processes and
        machines: PostgreSQL locks the row (`FOR UPDATE SKIP LOCKED`, so concurrent claimers
        pass over each other's rows instead of waiting), SQLite re-checks the condition in a
        conditional UPDATE under its write lock and counts the rows it changed.

        `running`: the jobs `owner` runs. On a retry (`replay`) a claimable job leased to
        `owner` that is not among them is the one the lost attempt claimed: it is returned,
        instead of waiting for its own lease to expire."""
        now = utcnow()
        lease = {"lease_owner": owner, "lease_expires_at": now + timedelta(seconds=ttl_s),
                 "updated_at": now}
        if replay:
            with self.read() as conn:
                landed = conn.execute(select(jobs.c.id).where(
                    jobs.c.lease_owner == owner, jobs.c.status.in_(CLAIMABLE),
                    jobs.c.id.not_in(list(running))).order_by(jobs.c.id).limit(1)).scalar()
            if landed is not None:
                return landed
        oldest = select(jobs.c.id).where(self._claimable(now)).order_by(jobs.c.id)
        if self.dialect == "postgresql":
            with self.engine.begin() as conn:
                job_id = conn.execute(oldest.limit(1).with_for_update(skip_locked=True)).scalar()
                if job_id is not None and conn.execute(update(jobs).where(
                        jobs.c.id == job_id, self._claimable(now)).values(**lease)).rowcount:
                    return job_id
            return None
        with self.read() as conn:
            candidates = conn.execute(oldest.limit(16)).scalars().all()
        for job_id in candidates:  # another claimer may win each one first: try the next
            with self.engine.begin() as conn:
                if conn.execute(update(jobs).where(jobs.c.id == job_id, self._claimable(now))
                                .values(**lease)).rowcount:
                    return job_id
        return None

    @retried()
    def reopen(self, job_id: int, owner: str) -> None:
        """`nas resume`: the job goes back to `pending` (a serve process may claim it, or the
        resuming process runs it) and an earlier cancel request is withdrawn, here and only
        here: a cancel that arrives after this call is a new one and stops the job. `owner`
        must hold the lease (proof that no live driver runs the job), which is released."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
                         .values(status="pending", cancel_requested=False, error=None,
                                 lease_owner=None, lease_expires_at=None, updated_at=utcnow()))

    @retried()
    def add_artifact(self, job_id: int, kind: str, path: str) -> None:
        """Record an artifact of the job (once: adding the same one again changes nothing)."""
        with self.engine.begin() as conn:
            if conn.execute(select(artifacts.c.id).where(
                    artifacts.c.job_id == job_id, artifacts.c.kind == kind,
                    artifacts.c.path == path)).first() is None:
                conn.execute(insert(artifacts).values(job_id=job_id, kind=kind, path=path,
                                                      created_at=utcnow()))
