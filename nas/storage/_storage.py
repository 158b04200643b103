"""`Storage`: every read and write of jobs, trials and measurements goes through here."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import LeaseHeldError, NasError
from ._device_values import refresh_device_values
from ._engine import ensure_schema, make_engine, mask_url, read_connection
from ._retry import retried
from .schema import (
    SOURCE_RANK,
    architectures,
    artifacts,
    database_info,
    jobs,
    measurements,
    servers,
    trial_reports,
    trial_weights,
    trials,
)

_CHUNK = 500
#: Job statuses `nas serve` claims: queued jobs, and running jobs whose lease expired (their
#: driver died). Paused, failed and cancelled jobs wait for `nas resume`.
CLAIMABLE = ("pending", "running")
#: A serve process is alive while its last heartbeat is within this many poll periods...
SERVER_ALIVE_POLLS = 3.0
#: ... and at least this many seconds: its heartbeat thread cannot beat while another thread
#: holds the interpreter, and `ray.init` does for 1.5 s at the end of connecting (measured
#: here; 2.2 s with the machine busy), so a serve connecting to Ray for a job it claimed
#: would look dead for a moment with `--poll-s 0.5`.
SERVER_ALIVE_MIN_S = 5.0
#: Serve rows silent for this long are dropped when another serve process starts.
SERVER_FORGET_S = 86400.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _epoch(value: float | None) -> datetime | None:
    return None if not value else datetime.fromtimestamp(value, timezone.utc)


@dataclass
class NewTrial:
    number: int
    key: str
    arch: dict[str, Any]


@dataclass
class StoredResult:
    trial_id: int
    status: str
    attempt: int
    worker: str
    started_at: float
    finished_at: float
    metrics: dict[str, float] | None
    score: float | None
    objectives: list[float] | None
    feasible: bool | None
    error: str | None
    architecture_id: int
    params: int | None
    flops: int | None
    measurements: list[dict[str, Any]]
    weights: bytes | None = None  # a torch state_dict, kept for the job's best trials
    #: intermediate reports (step, metric, value) of the trial, stored in `trial_reports`
    reports: Sequence[tuple[int, str, float]] = ()


@dataclass(frozen=True)
class MeasurementRow:
    """A device value of one architecture, from outside a job's trials."""

    key: str
    arch: dict[str, Any]
    device: str
    metric: str
    value: float
    source: str  # measured | imported | benchmark | predicted
    model_version: str | None = None


class Storage:
    """A database of jobs and trials (SQLite file by default, PostgreSQL by URL)."""

    def __init__(self, url: str, engine: Engine | None = None, create: bool = True) -> None:
        """`create=False`: refuse to create a new SQLite file (for commands about a job
        that cannot be in a database that does not exist)."""
        #: the URL for messages and logs, password masked; only the engine holds the real one
        self.url = mask_url(url)
        self.engine = engine or make_engine(url, create=create)
        ensure_schema(self.engine)
        self.dialect = self.engine.dialect.name
        self._database_id: str | None = None

    @property
    def database_id(self) -> str:
        """The database's own id: a random UUID stored in it when its schema was created
        (`database_info`), which keys its artifact folders (`nas.driver.artifact_dir`).

        Stored in the database rather than derived from the URL (a hash of the URL without
        its password would be simpler) because what must agree is the database, not its
        spelling: a relative and an absolute SQLite path, `localhost` and `127.0.0.1`, another
        role or a connection pooler all name one database and must find one checkpoint, and a
        database moved or restored elsewhere (`mv`, `pg_dump`/`pg_restore`) keeps its jobs, so
        it keeps their checkpoints. A copied SQLite file keeps the id too: right for a backup
        or a move (its job N is the same search), while a copy run on beside its original
        must be given its own `NAS_ARTIFACTS`."""
        if self._database_id is None:
            self._database_id = self._read_database_id()
        return self._database_id

    @retried()
    def _read_database_id(self) -> str:
        with self.read() as conn:
            value = conn.execute(select(database_info.c.uuid)).scalar_one_or_none()
        if value is None:
            raise NasError(f"the database {self.url} has no id (its `database_info` row was "
                           "deleted): its artifact folders cannot be told from another's")
        return value

    def close(self) -> None:
        self.engine.dispose()

    def read(self) -> Connection:
        """A connection for reads (see `read_connection`); writes use `engine.begin()`."""
        return read_connection(self.engine)

    # ---- helpers ------------------------------------------------------------------------
    def _insert_ignore(self, table):  # noqa: ANN001, ANN202
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    # ---- jobs -----------------------------------------------------------------------------
    def create_job(self, spec: dict[str, Any], name: str, seed: int) -> int:
        now = utcnow()
        with self.engine.begin() as conn:
            return conn.execute(
                insert(jobs).returning(jobs.c.id),
                {"name": name, "spec": spec, "status": "pending", "seed": seed,
                 "created_at": now, "updated_at": now, "snapshot_told": 0,
                 "snapshot_asked": 0, "elapsed_s": 0.0, "cancel_requested": False},
            ).scalar_one()

    @retried()
    def get_job(self, job_id: int) -> dict[str, Any]:
        with self.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise NasError(f"no job {job_id} in {self.url}")
        job = dict(row)
        for column in ("created_at", "updated_at", "lease_expires_at"):
            job[column] = as_utc(job[column])
        return job

    @retried()
    def list_jobs(self) -> list[dict[str, Any]]:
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
        return [{**dict(r), "created_at": as_utc(r["created_at"]),
                 "trials": per_job.get(r["id"], {})} for r in rows]

    @retried()
    def trial_counts(self, job_id: int) -> dict[str, int]:
        with self.read() as conn:
            rows = conn.execute(select(trials.c.status, func.count()).where(
                trials.c.job_id == job_id).group_by(trials.c.status)).all()
        return {status: n for status, n in rows}

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
        job = self.get_job(job_id)
        if job["status"] in ("completed", "failed", "cancelled"):
            raise NasError(f"job {job_id} is already {job['status']}")
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id)
                         .values(cancel_requested=True, updated_at=now))
            holder = conn.execute(select(jobs.c.lease_owner).where(
                jobs.c.id == job_id, jobs.c.lease_owner.is_not(None),
                jobs.c.lease_expires_at >= now)).scalar()
            # a driver that died on this host never sees the request: cancel now
            live = holder is not None and not self.owner_is_dead_here(holder)
            if not live:
                conn.execute(update(jobs).where(jobs.c.id == job_id)
                             .values(status="cancelled", lease_owner=None,
                                     lease_expires_at=None))
        return "cancelling" if live else "cancelled"

    # ---- leases ---------------------------------------------------------------------------
    @staticmethod
    def new_owner() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"

    @staticmethod
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
            if holder is None or self.owner_is_dead_here(holder):
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
        only `reopen_job` (the user's `nas resume`) withdraws one, so a cancel that arrives
        between a resume or a claim and the driver's start still stops the job."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
                         .values(status="running", error=None, updated_at=utcnow()))

    # ---- trials ---------------------------------------------------------------------------
    @retried()
    def load_trials(self, job_id: int) -> list[dict[str, Any]]:
        query = (
            select(trials.c.id, trials.c.number, trials.c.status, trials.c.attempt,
                   trials.c.metrics, trials.c.score, trials.c.objectives, trials.c.feasible,
                   trials.c.architecture_id, architectures.c.key, architectures.c.arch)
            .join(architectures, architectures.c.id == trials.c.architecture_id)
            .where(trials.c.job_id == job_id).order_by(trials.c.number)
        )
        with self.read() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    @retried()
    def load_reports(self, job_id: int) -> list[tuple[int, int, str, float]]:
        """The job's stored intermediate reports as (trial number, step, metric, value), in
        trial then step order (the order a sequential run made them in)."""
        query = (select(trials.c.number, trial_reports.c.step, trial_reports.c.metric,
                        trial_reports.c.value)
                 .join(trials, trials.c.id == trial_reports.c.trial_id)
                 .where(trials.c.job_id == job_id)
                 .order_by(trials.c.number, trial_reports.c.step, trial_reports.c.metric))
        with self.read() as conn:
            return [(n, s, m, float(v)) for n, s, m, v in conn.execute(query)]

    def _architecture_ids(self, conn, space: str, new: Sequence[NewTrial]) -> dict[str, int]:  # noqa: ANN001
        keys = sorted({t.key for t in new})
        # rows in key order: two transactions writing the same architectures lock them in
        # the same order, so they wait for each other instead of deadlocking (PostgreSQL)
        rows = [{"space": space, "key": t.key, "arch": t.arch}
                for t in sorted(new, key=lambda t: t.key)]
        conn.execute(self._insert_ignore(architectures), rows)
        ids: dict[str, int] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            ids.update(conn.execute(select(architectures.c.key, architectures.c.id).where(
                architectures.c.space == space, architectures.c.key.in_(chunk))).all())
        return ids

    @retried(replay_arg=True)
    def commit_step(
        self,
        job_id: int,
        owner: str,
        space: str,
        new_trials: Sequence[NewTrial] = (),
        results: Sequence[StoredResult] = (),
        dispatched: Iterable[tuple[int, int]] = (),
        snapshot: tuple[dict[str, Any], int, int] | None = None,
        elapsed_s: float | None = None,
        keep_weights: int = 0,
        *,
        replay: bool = False,
    ) -> dict[int, tuple[int, int]]:
        """One transaction of the driver loop: new trial rows, finished results, trials sent
        to workers (id, attempt), and optionally the strategy snapshot (state, told, asked).
        Trained weights that come with results are kept for the `keep_weights` best trials.

        Raises LeaseHeldError if this driver no longer holds the lease (nothing is written).
        Returns number -> (trial id, architecture id) of the new trials.

        `replay` (a retry after a transient error, see `_retry`): the previous attempt may
        have committed, so trial rows and weights that exist already are kept, not inserted
        twice; everything else the step writes is the same when written again.
        """
        created: dict[int, tuple[int, int]] = {}
        now = utcnow()
        with self.engine.begin() as conn:
            job_update = update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
            values: dict[str, Any] = {"updated_at": now}
            if snapshot is not None:
                values.update(strategy_state=snapshot[0], snapshot_told=snapshot[1],
                              snapshot_asked=snapshot[2])
            if elapsed_s is not None:
                values["elapsed_s"] = elapsed_s
            if not conn.execute(job_update.values(**values)).rowcount:
                raise LeaseHeldError(f"job {job_id}: this driver lost its lease; stopping")
            if new_trials:
                arch_ids = self._architecture_ids(conn, space, new_trials)
                rows = [{"job_id": job_id, "number": t.number, "architecture_id": arch_ids[t.key],
                         "status": "queued", "attempt": 0} for t in new_trials]
                created = (self._insert_trials_again(conn, job_id, rows) if replay else
                           {number: (tid, aid) for tid, number, aid in conn.execute(
                               insert(trials).returning(
                                   trials.c.id, trials.c.number, trials.c.architecture_id,
                                   sort_by_parameter_order=True), rows).all()})
            dispatched = list(dispatched)
            if dispatched:
                conn.execute(
                    update(trials).where(trials.c.id == bindparam("tid"))
                    .values(status="running", attempt=bindparam("att")),
                    [{"tid": tid, "att": attempt} for tid, attempt in dispatched])
            if results:
                self._store_results(conn, results, now)
                self._store_weights(conn, job_id, results, keep_weights, now, replay)
        return created

    def _insert_trials_again(self, conn, job_id: int,  # noqa: ANN001
                             rows: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
        """Insert the trial rows that do not exist yet; number -> (id, architecture id) of
        all of them."""
        conn.execute(self._insert_ignore(trials), rows)
        numbers = [row["number"] for row in rows]
        found = conn.execute(select(trials.c.number, trials.c.id, trials.c.architecture_id)
                             .where(trials.c.job_id == job_id, trials.c.number.in_(numbers)))
        return {number: (tid, aid) for number, tid, aid in found}

    def _store_weights(self, conn, job_id: int, results: Sequence[StoredResult],  # noqa: ANN001
                       keep: int, now: datetime, replay: bool = False) -> None:
        """Insert the weights of completed results, then keep only the `keep` best trials'
        (feasible first, by score, earlier trial on ties): the database stays small."""
        rows = [{"trial_id": r.trial_id, "job_id": job_id, "format": "torch-state-dict",
                 "size_bytes": len(r.weights), "data": r.weights, "created_at": now}
                for r in results if r.weights and r.status == "completed"]
        if not rows or keep <= 0:
            return
        conn.execute(self._insert_ignore(trial_weights) if replay else insert(trial_weights),
                     rows)
        infeasible_last = case((trials.c.feasible.is_(False), 1), else_=0)
        ranked = (select(trial_weights.c.trial_id)
                  .join(trials, trials.c.id == trial_weights.c.trial_id)
                  .where(trial_weights.c.job_id == job_id)
                  .order_by(infeasible_last, trials.c.score.desc().nulls_last(), trials.c.number)
                  .offset(keep))
        losers = conn.execute(ranked).scalars().all()
        if losers:
            conn.execute(delete(trial_weights).where(trial_weights.c.trial_id.in_(losers)))

    @retried()
    def get_weights(self, job_id: int, number: int) -> bytes | None:
        """The stored trained weights of a trial, if it is among the kept best."""
        query = (select(trial_weights.c.data)
                 .join(trials, trials.c.id == trial_weights.c.trial_id)
                 .where(trials.c.job_id == job_id, trials.c.number == number))
        with self.read() as conn:
            data = conn.execute(query).scalar()
        return bytes(data) if data is not None else None

    def _store_results(self, conn, results: Sequence[StoredResult], now: datetime) -> None:  # noqa: ANN001
        conn.execute(
            update(trials).where(trials.c.id == bindparam("tid")).values(
                status=bindparam("st"), attempt=bindparam("att"), worker=bindparam("wk"),
                started_at=bindparam("t0"), finished_at=bindparam("t1"),
                metrics=bindparam("mx"), score=bindparam("sc"), objectives=bindparam("ob"),
                feasible=bindparam("fe"), error=bindparam("er")),
            [{"tid": r.trial_id, "st": r.status, "att": r.attempt, "wk": r.worker,
              "t0": _epoch(r.started_at), "t1": _epoch(r.finished_at), "mx": r.metrics,
              "sc": r.score, "ob": r.objectives, "fe": r.feasible, "er": r.error}
             for r in results])
        reported = [{"trial_id": r.trial_id, "step": step, "metric": metric, "value": value}
                    for r in results for step, metric, value in r.reports]
        if reported:  # a retried step finds them written: kept, not inserted twice
            conn.execute(self._insert_ignore(trial_reports), reported)
        sized = sorted(({"aid": r.architecture_id, "p": r.params, "f": r.flops} for r in results
                        if r.params is not None or r.flops is not None),
                       key=lambda row: row["aid"])  # in id order, as above: no deadlocks
        if sized:
            conn.execute(update(architectures).where(architectures.c.id == bindparam("aid"))
                         .values(params=bindparam("p"), flops=bindparam("f")), sized)
        rows = [{"architecture_id": r.architecture_id, "device": m["device"],
                 "metric": m["metric"], "value": m["value"], "source": m["source"],
                 "source_rank": SOURCE_RANK.get(m["source"], 9), "created_at": now}
                for r in results for m in r.measurements]
        rows.sort(key=lambda row: (row["architecture_id"], row["device"], row["metric"],
                                   row["source"]))
        if rows:
            conn.execute(self._insert_ignore(measurements), rows)
        # a result's measurements may change other trials' preferred values too: all trials of
        # those architectures are rewritten; the other scored trials by themselves
        measured = {r.architecture_id for r in results if r.measurements}
        if measured:
            refresh_device_values(conn, architecture_ids=measured)
        scored = [r.trial_id for r in results if r.status == "completed" and r.score is not None
                  and r.architecture_id not in measured]
        if scored:
            refresh_device_values(conn, trial_ids=scored)

    @retried()
    def common_errors(self, job_id: int, limit: int = 3) -> list[tuple[str, int]]:
        """The most common first lines of the job's failed trials' errors, with counts. A
        trial's own architecture key in its error reads `<architecture>`, so that one cause
        ("architecture X is not in table T") counts once, not once per architecture."""
        counts: dict[str, int] = {}
        query = select(trials.c.error, architectures.c.key) \
            .join(architectures, trials.c.architecture_id == architectures.c.id) \
            .where(trials.c.job_id == job_id, trials.c.status == "failed")
        with self.read() as conn:
            for error, key in conn.execute(query):
                line = (error or "").strip().partition("\n")[0] or "(no error message)"
                if key and len(key) > 3:
                    line = line.replace(key, "<architecture>")
                counts[line] = counts.get(line, 0) + 1
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]

    @retried()
    def requeue_unfinished(self, job_id: int) -> None:
        """Trials left running by a cancelled driver go back to queued."""
        with self.engine.begin() as conn:
            conn.execute(update(trials).where(trials.c.job_id == job_id,
                                              trials.c.status == "running")
                         .values(status="queued"))

    # ---- measurements made outside jobs (imported, predicted, measured on demand) ----------
    @retried()
    def put_measurements(self, space: str, rows: Sequence[MeasurementRow]) -> dict[str, int]:
        """Store device values of architectures (created if new) in one transaction.

        A row replaces the stored value of the same (architecture, device, metric, source):
        re-importing a file is idempotent and a refitted predictor's values replace the old
        ones. Returns counts of new, updated and unchanged rows.
        """
        counts = {"new": 0, "updated": 0, "unchanged": 0}
        if not rows:
            return counts
        now = utcnow()
        with self.engine.begin() as conn:
            ids = self._architecture_ids(conn, space, [NewTrial(0, r.key, r.arch)
                                                       for r in rows])
            existing = self._existing_values(conn, ids, rows)
            inserts, updates = [], []
            for r in rows:
                aid = ids[r.key]
                before = existing.get((aid, r.device, r.metric, r.source))
                values = {"architecture_id": aid, "device": r.device, "metric": r.metric,
                          "value": float(r.value), "source": r.source,
                          "source_rank": SOURCE_RANK[r.source], "created_at": now,
                          "model_version": r.model_version}
                if before is None:
                    inserts.append(values)
                elif before != (float(r.value), r.model_version):
                    updates.append(values)
                else:
                    counts["unchanged"] += 1
            if inserts:
                conn.execute(insert(measurements), inserts)
            if updates:
                conn.execute(update(measurements).where(
                    measurements.c.architecture_id == bindparam("aid"),
                    measurements.c.device == bindparam("dev"),
                    measurements.c.metric == bindparam("met"),
                    measurements.c.source == bindparam("src"),
                ).values(value=bindparam("val"), model_version=bindparam("ver"),
                         created_at=bindparam("at")),
                    [{"aid": u["architecture_id"], "dev": u["device"], "met": u["metric"],
                      "src": u["source"], "val": u["value"], "ver": u["model_version"],
                      "at": now} for u in updates])
            counts["new"], counts["updated"] = len(inserts), len(updates)
            changed = {row["architecture_id"] for row in inserts + updates}
            if changed:
                refresh_device_values(conn, architecture_ids=changed)
        return counts

    @staticmethod
    def _existing_values(conn, ids: dict[str, int], rows: Sequence[MeasurementRow]  # noqa: ANN001
                         ) -> dict[tuple[int, str, str, str], tuple[float, str | None]]:
        wanted = sorted({ids[r.key] for r in rows})
        pairs = {(r.device, r.metric) for r in rows}
        found: dict[tuple[int, str, str, str], tuple[float, str | None]] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            query = select(measurements.c.architecture_id, measurements.c.device,
                           measurements.c.metric, measurements.c.source, measurements.c.value,
                           measurements.c.model_version).where(
                measurements.c.architecture_id.in_(chunk))
            for aid, device, metric, source, value, version in conn.execute(query):
                if (device, metric) in pairs:
                    found[(aid, device, metric, source)] = (float(value), version)
        return found

    # ---- artifacts ------------------------------------------------------------------------
    @retried()
    def add_artifact(self, job_id: int, kind: str, path: str) -> None:
        """Record an artifact of the job (once: adding the same one again changes nothing)."""
        with self.engine.begin() as conn:
            if conn.execute(select(artifacts.c.id).where(
                    artifacts.c.job_id == job_id, artifacts.c.kind == kind,
                    artifacts.c.path == path)).first() is None:
                conn.execute(insert(artifacts).values(job_id=job_id, kind=kind, path=path,
                                                      created_at=utcnow()))


    # ---- `nas serve`: atomic job claims and the registry of serve processes -----------------
    @staticmethod
    def _claimable(now: datetime):  # noqa: ANN205
        return and_(jobs.c.status.in_(CLAIMABLE),
                    or_(jobs.c.lease_owner.is_(None), jobs.c.lease_expires_at.is_(None),
                        jobs.c.lease_expires_at < now))

    @retried(replay_arg=True)
    def claim_job(self, owner: str, ttl_s: float, running: Sequence[int] = (), *,
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
    def reopen_job(self, job_id: int, owner: str) -> None:
        """`nas resume`: the job goes back to `pending` (a serve process may claim it, or the
        resuming process runs it) and an earlier cancel request is withdrawn, here and only
        here: a cancel that arrives after this call is a new one and stops the job. `owner`
        must hold the lease (proof that no live driver runs the job), which is released."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
                         .values(status="pending", cancel_requested=False, error=None,
                                 lease_owner=None, lease_expires_at=None, updated_at=utcnow()))

    @retried()
    def register_server(self, name: str, owner: str, poll_s: float, max_jobs: int) -> None:
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
    def server_heartbeat(self, owner: str, job_ids: Sequence[int], ttl_s: float) -> bool:
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

    @retried()
    def unregister_server(self, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(servers).where(servers.c.owner == owner))

    @retried()
    def list_servers(self) -> list[dict[str, Any]]:
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
        result = []
        for row in rows:
            server = dict(row)
            server["started_at"] = as_utc(server["started_at"])
            server["heartbeat_at"] = as_utc(server["heartbeat_at"])
            silent = (now - server["heartbeat_at"]).total_seconds()
            server["alive"] = silent <= max(SERVER_ALIVE_POLLS * server["poll_s"],
                                            SERVER_ALIVE_MIN_S)
            server["jobs"] = held.get(server["owner"], [])
            result.append(server)
        return result

    def live_servers(self) -> list[dict[str, Any]]:
        return [s for s in self.list_servers() if s["alive"]]
