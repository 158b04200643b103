"""Trials: the driver's step (new trials, results, dispatches, the strategy snapshot in one
transaction), trained weights, intermediate reports, and what reads them back."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import bindparam, case, delete, func, insert, select, update

from ..errors import LeaseHeldError
from ._area import Area, NewTrial, utcnow
from ._device_values import refresh_device_values
from ._retry import retried
from .schema import (
    SOURCE_RANK,
    architectures,
    jobs,
    measurements,
    trial_reports,
    trial_weights,
    trials,
)


def _epoch(value: float | None) -> datetime | None:
    return None if not value else datetime.fromtimestamp(value, timezone.utc)


@dataclass
class ScoredResult:
    """A worker's `TrialResult` scored by the driver against the job's objectives and
    constraints, with the ids of its rows: what `commit_step` writes."""

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



@dataclass(frozen=True, slots=True)
class TrialRecord:
    """A stored trial as `storage.trials.load(job)` reads it back: the driver's resume and
    the commands that go over every trial of a job. (`ScoredResult` is what the driver
    writes; `nas trials`, `nas best` and the dashboard read richer rows by their own
    queries.)"""

    id: int
    number: int
    status: str  # queued | running | completed | failed | pruned
    attempt: int
    metrics: dict[str, float] | None
    score: float | None  # the primary objective, higher is better (negated for `min`)
    objectives: list[float | None] | None  # each objective's value as measured, in order
    feasible: bool | None  # within the job's constraints (None: a constrained value unknown)
    architecture_id: int
    key: str  # the architecture's key in its space
    arch: dict[str, Any]


class Trials(Area):
    """`storage.trials`: a job's trials and what they produced."""

    @retried()
    def counts(self, job_id: int) -> dict[str, int]:
        with self.read() as conn:
            rows = conn.execute(select(trials.c.status, func.count()).where(
                trials.c.job_id == job_id).group_by(trials.c.status)).all()
        return {status: n for status, n in rows}

    @retried()
    def load(self, job_id: int) -> list[TrialRecord]:
        """The job's trials in number order, each with its architecture."""
        query = (
            select(trials.c.id, trials.c.number, trials.c.status, trials.c.attempt,
                   trials.c.metrics, trials.c.score, trials.c.objectives, trials.c.feasible,
                   trials.c.architecture_id, architectures.c.key, architectures.c.arch)
            .join(architectures, architectures.c.id == trials.c.architecture_id)
            .where(trials.c.job_id == job_id).order_by(trials.c.number)
        )
        with self.read() as conn:
            return [TrialRecord(**row) for row in conn.execute(query).mappings()]

    @retried()
    def reports(self, job_id: int) -> list[tuple[int, int, str, float]]:
        """The job's stored intermediate reports as (trial number, step, metric, value), in
        trial then step order (the order a sequential run made them in)."""
        query = (select(trials.c.number, trial_reports.c.step, trial_reports.c.metric,
                        trial_reports.c.value)
                 .join(trials, trials.c.id == trial_reports.c.trial_id)
                 .where(trials.c.job_id == job_id)
                 .order_by(trials.c.number, trial_reports.c.step, trial_reports.c.metric))
        with self.read() as conn:
            return [(n, s, m, float(v)) for n, s, m, v in conn.execute(query)]

    @retried(replay_arg=True)
    def commit_step(
        self,
        job_id: int,
        owner: str,
        space: str,
        new_trials: Sequence[NewTrial] = (),
        results: Sequence[ScoredResult] = (),
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
                arch_ids = self.architecture_ids(conn, space, new_trials)
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
        conn.execute(self.insert_ignore(trials), rows)
        numbers = [row["number"] for row in rows]
        found = conn.execute(select(trials.c.number, trials.c.id, trials.c.architecture_id)
                             .where(trials.c.job_id == job_id, trials.c.number.in_(numbers)))
        return {number: (tid, aid) for number, tid, aid in found}

    def _store_weights(self, conn, job_id: int, results: Sequence[ScoredResult],  # noqa: ANN001
                       keep: int, now: datetime, replay: bool = False) -> None:
        """Insert the weights of completed results, then keep only the `keep` best trials'
        (feasible first, by score, earlier trial on ties): the database stays small."""
        rows = [{"trial_id": r.trial_id, "job_id": job_id, "format": "torch-state-dict",
                 "size_bytes": len(r.weights), "data": r.weights, "created_at": now}
                for r in results if r.weights and r.status == "completed"]
        if not rows or keep <= 0:
            return
        conn.execute(self.insert_ignore(trial_weights) if replay else insert(trial_weights),
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
    def weights(self, job_id: int, number: int) -> bytes | None:
        """The stored trained weights of a trial, if it is among the kept best."""
        query = (select(trial_weights.c.data)
                 .join(trials, trials.c.id == trial_weights.c.trial_id)
                 .where(trials.c.job_id == job_id, trials.c.number == number))
        with self.read() as conn:
            data = conn.execute(query).scalar()
        return bytes(data) if data is not None else None

    def _store_results(self, conn, results: Sequence[ScoredResult], now: datetime) -> None:  # noqa: ANN001
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
            conn.execute(self.insert_ignore(trial_reports), reported)
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
            conn.execute(self.insert_ignore(measurements), rows)
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
