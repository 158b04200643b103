"""The driver loop: ask -> store -> dispatch -> store results -> tell, crash-safe.

Determinism: the strategy is told results strictly in trial-number order, and after each
tell the window of in-flight trials is refilled (`window = parallelism x batch_size`). So
the sequence of ask/tell calls depends only on the seed and the results, never on timing,
and a resumed job replays it exactly: it restores the last strategy snapshot and walks
forward over the stored trials, re-asking (the proposals match the stored rows) and
re-telling stored results, dispatching only the trials that never finished.

Each loop step writes one transaction: new trial rows, finished results, trials marked as
dispatched and, every `snapshot_every` tells, the strategy state with its cursors. A kill at
any instant leaves the database at a step boundary.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces import Arch, SearchSpace, get_space
from workers import EvaluatorSpec, TrialResult, TrialTask
from workers.evaluators import Evaluator, evaluator_class, get_evaluator
from workers.user_code import UserCode

from .code_check import check_code, shipped_code
from .errors import DatabaseUnavailableError, LeaseHeldError, NasError
from .progress import PhaseListener, ProgressWriter, epoch_detail
from .spec import MAX_DEVICE, MAX_METRIC, JobSpec, parse_spec, short_repr
from .storage import (
    JobRecord,
    MeasurementRow,
    NewTrial,
    ScoredResult,
    Storage,
    TrialRecord,
    new_owner,
    preferred_device_values,
    stored_values,
)
from .storage.schema import SOURCE_RANK
from .strategies import (
    SearchContext,
    Strategy,
    TrialView,
    get_strategy,
)
from .strategies.preparation import Evaluations, LongTask, Preparation

Progress = Callable[[int, "int | None", "float | None"], None]
FINISHED = ("completed", "failed", "pruned")


@dataclass
class _Slot:
    """A trial of the current window."""

    number: int
    key: str
    arch: Arch
    trial_id: int = 0
    architecture_id: int = 0
    attempt: int = 0


def score_result(spec: JobSpec, result: TrialResult) -> tuple[str, str | None, float | None,
                                                               list[float] | None, bool | None]:
    """(status, error, score, objective values, feasible) of a worker's result.

    feasible is False when a known value violates a constraint, None when a constrained
    value is unknown (it is not guessed), True otherwise.
    """
    if result.status != "completed":  # failed, or pruned (told like a failed trial)
        error = result.error.replace("\x00", "\\x00") if result.error else result.error
        return ("pruned" if result.status == "pruned" else "failed"), error, None, None, None
    unstorable = _unstorable_measurement(result.measurements)
    if unstorable:
        return "failed", unstorable, None, None, None
    missing = [o.metric for o in spec.objectives
               if o.device is None and o.metric not in result.metrics]
    if missing:
        return "failed", f"evaluator reported no {missing[0]!r} metric", None, None, None
    # a device objective may be unknown (no latency for this architecture): value None
    values = [_constrained_value(result, o.metric, o.device) for o in spec.objectives]
    feasible: bool | None = True
    for constraint in spec.constraints:
        value = _constrained_value(result, constraint.metric, constraint.device)
        if value is None:
            feasible = None if feasible else feasible
        elif not constraint.satisfied(value):
            feasible = False
            break
    score = spec.objectives[0].score(values[0]) if values[0] is not None else None
    return "completed", None, score, values, feasible


def _unstorable_measurement(found: list[dict[str, Any]]) -> str | None:
    """Why a measurement reported by an evaluator cannot be stored (a name longer than its
    column or holding a NUL, which PostgreSQL refuses and SQLite would take), else None:
    such a result fails its trial instead of the job's next write."""
    for m in found:
        for field, limit in (("device", MAX_DEVICE), ("metric", MAX_METRIC)):
            name = str(m[field])
            if not name or len(name) > limit or "\x00" in name:
                return (f"evaluator reported a measurement whose {field} name is not 1 to "
                        f"at most {limit} characters without NUL: {short_repr(name)}")
    return None


def _constrained_value(result: TrialResult, metric: str, device: str | None) -> float | None:
    if device is None:
        value = result.metrics.get(metric)
        return float(value) if value is not None else None
    for m in sorted(result.measurements, key=lambda m: m["source"] != "measured"):
        if m["device"] == device and m["metric"] == metric:
            return float(m["value"])
    return None


def artifact_dir(database_id: str, job_id: int) -> Path:
    """The job's artifact folder (driver log, supernet checkpoints, exported subnet weights):
    `$NAS_ARTIFACTS/<database id>/job-N`, default `./nas-artifacts/...`, absolute so that
    worker processes find it. Keyed by the database (`Storage.database_id`) as well as the
    job, since job ids restart at 1 in every database: job 1 of two databases sharing one
    NAS_ARTIFACTS must not share a checkpoint. On a cluster, point NAS_ARTIFACTS at a
    filesystem every node shares."""
    if not database_id or not database_id.replace("-", "").isalnum():
        raise ValueError(f"not a database id: {database_id!r}")
    root = Path(os.environ.get("NAS_ARTIFACTS", "nas-artifacts")).resolve()
    return root / database_id / f"job-{job_id}"


def make_executor(spec: JobSpec, evaluator_spec: EvaluatorSpec, ray_address: str | None,
                  user_code: UserCode | None = None):
    """The job's executor; on Ray, `user_code` travels to the workers (`RayExecutor`)."""
    from workers.executors import LocalExecutor, RayExecutor

    if spec.executor == "local":  # one batch at a time: it runs them one after the other,
        # and a batch stored as dispatched before it runs is one that may have killed us
        return LocalExecutor(evaluator_spec, slots=1)
    gpu_trials = evaluator_class(evaluator_spec.evaluator).uses_gpu(evaluator_spec.evaluator_args)
    return RayExecutor(evaluator_spec, slots=spec.parallelism, address=ray_address,
                       max_attempts=spec.max_attempts, gpu_trials=gpu_trials,
                       user_code=shipped_code(user_code))


#: Trials per worker task for cheap evaluators. The strategy is told results in order, so
#: `parallelism x batch_size` proposals are made before the first of them is told: a large
#: window turns evolution into random search (measured on NB201 at 100 trials, 30 seeds:
#: window 1 -> 94.12 test acc, 8 -> 94.17, 16 -> 94.04, 64 -> 93.82, random 93.81).
CHEAP_BATCH = 4

#: Seconds past the seconds budget before the driver stops trials still out. Workers fail a
#: trial at the budget's end themselves; this only catches one stuck where no thread can
#: be abandoned (a worker whose native code holds the interpreter).
BUDGET_GRACE_S = 10.0
#: How long the driver waits for a finished search's last progress records (a remote actor
#: holds them; a loaded cluster can take seconds to answer).
FINAL_PROGRESS_S = 10.0


def default_batch_size(spec: JobSpec) -> int:
    """Cheap evaluators (table look-ups) send `CHEAP_BATCH` trials per worker task, others 1."""
    if spec.batch_size is not None:
        return spec.batch_size
    return CHEAP_BATCH if evaluator_class(spec.evaluator).cheap else 1


def _cache_device(spec: EvaluatorSpec, space: SearchSpace) -> str | None:
    """The evaluator's cache device (see `Evaluator.cache_device`), if it has one."""
    if evaluator_class(spec.evaluator).cache_device is Evaluator.cache_device:
        return None
    return get_evaluator(spec.evaluator, space, **spec.evaluator_args).cache_device()


class Driver:
    """Runs (or resumes) one job to completion under a lease."""

    def __init__(
        self,
        storage: Storage,
        job_id: int,
        *,
        ray_address: str | None = None,
        lease_ttl_s: float = 30.0,
        heartbeat_s: float = 2.0,
        progress: Progress | None = None,
        max_duplicate_proposals: int = 2000,
        executor_factory: Callable[[JobSpec, EvaluatorSpec], Any] | None = None,
        stop: threading.Event | None = None,
        allow_code_change: bool = False,
        on_phase: PhaseListener | None = None,
    ) -> None:
        self.storage = storage
        self.job_id = job_id
        self.ray_address = ray_address
        self.lease_ttl_s = lease_ttl_s
        self.heartbeat_s = heartbeat_s
        self.progress = progress
        self.max_duplicate_proposals = max_duplicate_proposals
        self.executor_factory = executor_factory
        #: set by another thread (`nas serve` stopping): the job pauses at its next
        #: heartbeat, as a SIGINT pauses it (signals only reach the main thread)
        self.stop = stop
        #: run even if the job's user code differs from the code it ran (`nas.code_check`)
        self.allow_code_change = allow_code_change
        #: told of every phase's progress (pool, supernet, trials) as it happens, unthrottled
        self.on_phase = on_phase
        self.user_code: UserCode | None = None
        self.owner = new_owner()

    # ---- entry point ----------------------------------------------------------------------
    def run(self) -> str:
        """Run to the end of the budget; returns the job's final status."""
        job = self.storage.jobs.get(self.job_id)
        if job.status == "completed":
            raise NasError(f"job {self.job_id} is already completed")
        spec = parse_spec(job.spec, check_components=False)
        self.storage.jobs.acquire_lease(self.job_id, self.owner, self.lease_ttl_s)
        try:
            self.user_code = check_code(self.storage, self.job_id,
                                        allow_change=self.allow_code_change)
            self.storage.jobs.start_running(self.job_id, self.owner)
            if self.storage.jobs.cancel_requested(self.job_id):  # asked before this driver started
                status, note = "cancelled", "cancelled by the user"
            else:
                status, note = _Run(self, spec, job).execute()
        except (LeaseHeldError, DatabaseUnavailableError):
            raise  # not the job's fault: it stays as stored, for a resume or a takeover
        except KeyboardInterrupt:
            self._pause()
            raise
        except BaseException as exc:
            self.storage.jobs.set_status(self.job_id, "failed", owner=self.owner,
                                         error=f"{type(exc).__name__}: {exc}")
            raise
        if status == "paused":
            self._pause()
        elif status == "failed":
            self.storage.jobs.set_status(self.job_id, status, owner=self.owner, error=note)
        else:
            self.storage.jobs.set_status(self.job_id, status, owner=self.owner, note=note)
        return status

    def _pause(self) -> None:
        self.storage.jobs.set_status(self.job_id, "paused", owner=self.owner,
                                     error="interrupted; `nas resume` continues it")


class KnownValues:
    """Values a strategy may know before evaluating an architecture: analytic params/FLOPs,
    the evaluator's device tables (e.g. HW-NAS-Bench latencies) and measurements stored by
    other jobs (measured, imported or predicted; read once at driver start).

    This job's own results are left out on purpose: they only concern architectures the job
    already has, and leaving them out keeps a resumed job's proposals identical to the
    interrupted run's (a value learned after an ask must not change that ask on replay).
    """

    def __init__(self, spec: JobSpec, space: SearchSpace, storage: Storage,
                 job_keys: set[str]) -> None:
        self.space = space
        self.tables: dict[tuple[str, str], dict[str, float]] = {}
        self._analytic: dict[tuple[str, str], float] = {}
        pairs = {(c.device, c.metric) for c in spec.constraints if c.device} | \
            {(o.device, o.metric) for o in spec.objectives if o.device}
        if not pairs:
            return
        from workers.evaluators import get_evaluator

        evaluator = get_evaluator(spec.evaluator, space, **spec.evaluator_args)
        benchmark = SOURCE_RANK["benchmark"]
        for device, metric in sorted(pairs):
            values = dict(evaluator.known_values(device, metric) or {})
            stored = preferred_device_values(storage, space.name, device, metric)
            for key, (value, rank) in stored.items():
                # the evaluator's table is a `benchmark` source: a prediction never beats it
                if key not in job_keys and (key not in values or rank < benchmark):
                    values[key] = value
            self.tables[(device, metric)] = values

    def __call__(self, key: str, metric: str, device: str | None) -> float | None:
        if device is not None:
            return self.tables.get((device, metric), {}).get(key)
        extra = metric in self.space.cost_metrics
        if metric not in ("params", "flops") and not extra:
            return None
        cached = self._analytic.get((key, metric))
        if cached is None:
            arch = self.space.from_key(key)
            if extra:
                cached = float(self.space.costs(arch)[metric])
            else:
                cached = float(self.space.params(arch) if metric == "params"
                               else self.space.flops(arch))
            self._analytic[(key, metric)] = cached
        return cached


def search_context(spec: JobSpec, values: KnownValues, known: set[str],
                   artifacts: Path | None = None) -> SearchContext:
    return SearchContext(
        objectives=spec.objectives, constraints=spec.constraints,
        value_of=values, is_known=known.__contains__, space_args=dict(spec.space_args),
        artifacts=artifacts)


class _Run:
    """The state of one driver session over one job."""

    def __init__(self, driver: Driver, spec: JobSpec, job: JobRecord) -> None:
        self.d = driver
        self.storage = driver.storage
        self.spec = spec
        self.job_id = driver.job_id
        self.space: SearchSpace = get_space(spec.space, **spec.space_args)
        self.strategy: Strategy = get_strategy(spec.strategy, self.space, seed=spec.seed,
                                               **spec.strategy_args)
        self.evaluator_spec = EvaluatorSpec(spec.space, spec.space_args, spec.evaluator,
                                            spec.evaluator_args)
        self.batch = default_batch_size(spec)
        self.window = spec.parallelism * self.batch
        self.cache_device = _cache_device(self.evaluator_spec, self.space)
        self.target = spec.budget_trials if spec.budget_trials is not None else math.inf
        self.elapsed_before = float(job.elapsed_s or 0.0)
        self.note: str | None = None
        # cursors: trials 1..told were told to the strategy, 1..asked were proposed
        self.told = self.asked = 0
        if job.strategy_state is not None:
            self.strategy.load_state_dict(job.strategy_state)
            self.told, self.asked = job.snapshot_told, job.snapshot_asked
        self.last_snapshot = self.told
        self.stored = {row.number: row for row in self.storage.trials.load(self.job_id)}
        self.known = {row.key for n, row in self.stored.items() if n <= self.asked}
        job_keys = {row.key for row in self.stored.values()}
        #: the job's artifact folder; trial N's scratch folder is `trials/N` (`ctx.scratch_dir`)
        self.artifacts = artifact_dir(self.storage.database_id, self.job_id)
        self.strategy.bind(search_context(
            spec, KnownValues(spec, self.space, self.storage, job_keys), self.known,
            self.artifacts))
        self.slots: dict[int, _Slot] = {}
        self.finished: dict[int, TrialView] = {}
        self.best: float | None = None
        self.completed = 0  # completed trials of the job, stored ones included
        # work for the next transaction
        self.new_trials: list[NewTrial] = []
        self.results: list[ScoredResult] = []
        self.dispatched: list[tuple[int, int]] = []
        self.to_dispatch: list[_Slot] = []
        self.snapshot: tuple[dict[str, Any], int, int] | None = None
        self.pruner: Any = None  # the job's early-stopping pruner (handle), if it has one
        #: the job's phases in the database, for `nas status` and the dashboard
        self.phases = ProgressWriter(self.storage, self.job_id, listener=driver.on_phase)
        self._restore_window()

    # ---- restore ---------------------------------------------------------------------------
    def _restore_window(self) -> None:
        """Rebuild the in-flight window (told, asked] and the results stored past `told`."""
        for number, row in self.stored.items():
            self.completed += row.status == "completed"
            if row.status in FINISHED and row.score is not None:
                self.best = max(self.best, row.score) if self.best is not None \
                    else row.score
            if number <= self.told:
                continue
            if row.status in FINISHED:
                self.finished[number] = self._view_of_row(row)
            if number <= self.asked:
                self._adopt(number, row)

    def _adopt(self, number: int, row: TrialRecord) -> None:
        slot = _Slot(number, row.key, row.arch, row.id, row.architecture_id, row.attempt)
        self.slots[number] = slot
        if row.status not in FINISHED:
            self.to_dispatch.append(slot)

    def _view_of_row(self, row: TrialRecord) -> TrialView:
        objectives = tuple(row.objectives) if row.objectives else None
        return TrialView(row.number, row.arch, row.key, row.status, row.metrics or {},
                         self._strategy_score(row.score, row.feasible),
                         objectives)

    @staticmethod
    def _strategy_score(score: float | None, feasible: bool | None) -> float | None:
        return None if feasible is False else score

    # ---- ask -------------------------------------------------------------------------------
    def _propose(self) -> tuple[str, Arch] | None:
        """The next non-duplicate proposal, or None when the strategy keeps repeating itself."""
        for _ in range(self.d.max_duplicate_proposals):
            arch = self.strategy.ask()
            key = self.space.key(arch)
            if key not in self.known:
                return key, arch
        return None

    def _fill(self) -> None:
        """Propose trials until the window is full or the budget is spent."""
        while self.asked < min(self.told + self.window, self.target):
            number = self.asked + 1
            proposal = self._propose()
            row = self.stored.get(number)
            if row is not None:  # replaying: the stored trial is the truth
                if proposal is None or proposal[0] != row.key:
                    self.note = (f"replay diverged at trial {number}; kept the stored trial")
                self.known.add(row.key)
                self.asked = number
                self._adopt(number, row)
                continue
            if proposal is None:
                self.target = self.asked
                self.note = (f"stopped after {self.asked} trials: "
                             f"{self.d.max_duplicate_proposals} proposals in a row were "
                             "already evaluated (space exhausted?)")
                return
            key, arch = proposal
            self.known.add(key)
            self.asked = number
            slot = _Slot(number, key, arch)
            self.slots[number] = slot
            self.new_trials.append(NewTrial(number, key, arch))

    # ---- tell ------------------------------------------------------------------------------
    def _accept(self, result: TrialResult) -> None:
        slot = self.slots.get(result.number)
        if slot is None or result.number in self.finished or result.number <= self.told:
            return  # a stale duplicate of a result already taken
        status, error, score, values, feasible = score_result(self.spec, result)
        if status == "completed":  # what the strategy adds (e.g. a search's metrics)
            extra = self.strategy.result_metrics(slot.key)
            if extra:
                result.metrics = {**result.metrics, **extra}
            if result.weights is None:
                result.weights = self.strategy.result_weights(slot.key)
        self.results.append(ScoredResult(
            slot.trial_id, status, result.attempt, result.worker, result.started_at,
            result.finished_at, result.metrics if status != "failed" else None, score,
            values, feasible, error, slot.architecture_id, result.params, result.flops,
            result.measurements if status == "completed" else [],
            result.weights if status == "completed" else None, result.reports))
        self.completed += status == "completed"
        if score is not None:
            self.best = score if self.best is None else max(self.best, score)
        self.finished[result.number] = TrialView(
            result.number, slot.arch, slot.key, status, result.metrics,
            self._strategy_score(score, feasible), tuple(values) if values else None)

    def _tell_in_order(self) -> None:
        while self.told + 1 in self.finished:
            view = self.finished.pop(self.told + 1)
            self.strategy.tell(view)
            self.slots.pop(view.number, None)
            self.told += 1
            self._fill()
        if self.told - self.last_snapshot >= self.spec.snapshot_every:
            self._take_snapshot()

    def _take_snapshot(self) -> None:
        self.snapshot = (self.strategy.state_dict(), self.told, self.asked)
        self.last_snapshot = self.told

    # ---- persistence and dispatch ------------------------------------------------------------
    def _commit(self, elapsed: float | None = None) -> None:
        created = self.storage.trials.commit_step(
            self.job_id, self.d.owner, self.space.name, self.new_trials, self.results,
            self.dispatched, self.snapshot, elapsed, keep_weights=self.spec.keep_weights)
        for number, (trial_id, architecture_id) in created.items():
            slot = self.slots[number]
            slot.trial_id, slot.architecture_id = trial_id, architecture_id
            self.to_dispatch.append(slot)
        self.new_trials, self.results, self.dispatched = [], [], []
        self.snapshot = None

    def _dispatch(self, executor: Any) -> None:
        batches: list[list[TrialTask]] = []
        while self.to_dispatch and executor.free_slots() > len(batches):
            tasks = [self._task(slot) for slot in self._next_chunk()
                     if slot.attempt + 1 <= self.spec.max_attempts or self._give_up(slot)]
            if tasks and self.cache_device is not None:
                cached = stored_values(self.storage, self.space.name, [t.key for t in tasks],
                                       self.cache_device)
                for task in tasks:
                    task.cached = cached.get(task.key, {})
            if tasks:
                batches.append(tasks)
        if executor.in_process and self.dispatched:
            self._commit()  # the attempts are stored before a trial can kill this process
        for tasks in batches:
            executor.submit(tasks)

    def _next_chunk(self) -> list[_Slot]:
        """Up to `batch` trials to send together. A trial that was sent before and never
        finished (its worker or driver died) goes alone: if it is what killed them, it
        does not take batch-mates down with it again."""
        size = 1
        if not self.to_dispatch[0].attempt:
            while size < min(self.batch, len(self.to_dispatch)) and \
                    not self.to_dispatch[size].attempt:
                size += 1
        chunk, self.to_dispatch = self.to_dispatch[:size], self.to_dispatch[size:]
        return chunk

    def _task(self, slot: _Slot) -> TrialTask:
        """The slot's next attempt, recorded for the next commit."""
        slot.attempt += 1
        self.dispatched.append((slot.trial_id, slot.attempt))
        deadline = None
        if self.spec.budget_seconds is not None:
            deadline = time.time() + self.spec.budget_seconds - self._elapsed()
        return TrialTask(slot.number, slot.key, slot.arch, slot.attempt,
                         timeout_s=self.spec.trial_timeout_s, deadline=deadline,
                         job_seed=self.spec.seed, pruner=self.pruner,
                         scratch_dir=str(self.artifacts / "trials" / str(slot.number)))

    def _give_up(self, slot: _Slot) -> bool:
        """Fail a trial out of attempts (False: it is not dispatched)."""
        self._fail(slot, f"abandoned after {slot.attempt} attempts: its driver or worker "
                         "died each time")
        return False

    def _fail(self, slot: _Slot, error: str) -> None:
        now = time.time()
        self._accept(TrialResult(slot.number, slot.key, "failed", slot.attempt, error=error,
                                 started_at=now, finished_at=now))

    # ---- the loop --------------------------------------------------------------------------
    def _elapsed(self) -> float:
        """Seconds the job has run, over all its driver sessions."""
        return self.elapsed_before + time.monotonic() - self.started

    def execute(self) -> tuple[str, str | None]:
        start = self.started = time.monotonic()
        executor = (self.d.executor_factory(self.spec, self.evaluator_spec)
                    if self.d.executor_factory
                    else make_executor(self.spec, self.evaluator_spec, self.d.ray_address,
                                       self.d.user_code))
        try:
            if self.spec.early_stopping is not None:  # fed what finished trials reported
                self.pruner = executor.start_pruner(self.spec.early_stopping,
                                                    self.storage.trials.reports(self.job_id))
            stopped = self._prepare(executor)
            if stopped is not None:
                return stopped
            self._tell_in_order()  # results stored past the snapshot are told first
            self._fill()
            last_beat = time.monotonic()
            while True:
                self._commit()
                self._report()  # after the commit: what it counts is stored
                self._dispatch(executor)
                if self.told >= self.target and executor.in_flight() == 0:
                    break
                if not self.to_dispatch and executor.in_flight() == 0 and \
                        self.told + 1 not in self.finished:
                    raise NasError(f"job {self.job_id}: no trial in flight but trial "
                                   f"{self.told + 1} is not finished")
                for result in executor.poll(timeout=self.d.heartbeat_s):
                    self._accept(result)
                self._tell_in_order()
                elapsed = self._elapsed()
                if self.spec.budget_seconds is not None and elapsed >= self.spec.budget_seconds:
                    self.target = min(self.target, self.asked)
                    if elapsed >= self.spec.budget_seconds + BUDGET_GRACE_S:
                        self._cut_off(executor)
                if time.monotonic() - last_beat >= self.d.heartbeat_s:
                    last_beat = time.monotonic()
                    stop = self._beat(elapsed)
                    if stop is not None:
                        executor.shutdown()
                        self._commit(elapsed)
                        if stop == "cancelled":
                            self.storage.trials.requeue_unfinished(self.job_id)
                        return stop, "cancelled by the user" if stop == "cancelled" else None
            self._take_snapshot()
            self._commit(self.elapsed_before + time.monotonic() - start)
            self._report()
            if self.told and not self.completed:
                return "failed", self._all_failed_reason()
            return "completed", self.note
        finally:
            executor.shutdown()
            self.phases.flush()

    def _cut_off(self, executor: Any) -> None:
        """The seconds budget is spent and trials are still out (workers enforce it, so one
        that ignores its deadline is stuck): stop them and fail them, saying why."""
        executor.shutdown()
        self.to_dispatch = []
        for slot in list(self.slots.values()):
            if slot.number not in self.finished and slot.number > self.told:
                self._fail(slot, "stopped: the job's seconds budget (budget.seconds) ran out "
                                 "before it finished")
        self._tell_in_order()

    def _all_failed_reason(self) -> str:
        """Why a job none of whose trials completed failed: its most common errors."""
        reasons = self.storage.trials.common_errors(self.job_id, limit=1)
        if not reasons:
            return f"every one of the {self.told} trials failed"
        line, count = reasons[0]
        return (f"every one of the {self.told} trials failed; the most common error "
                f"({count} of {self.told}): {line[:500]}")

    # ---- heartbeat, and the strategy's preparation ----------------------------------------------
    def _beat(self, elapsed: float) -> str | None:
        """Heartbeat the lease (LeaseHeldError when it was lost) and say whether to stop
        here: `paused` when the driver's stop event is set (`nas serve` stopping),
        `cancelled` when the user asked, else None."""
        if self.d.stop is not None and self.d.stop.is_set():
            return "paused"
        if not self.storage.jobs.heartbeat(self.job_id, self.d.owner, self.d.lease_ttl_s, elapsed):
            raise LeaseHeldError(f"job {self.job_id}: lease lost; stopping")
        if self.storage.jobs.cancel_requested(self.job_id):
            return "cancelled"
        return None

    def _prepare(self, executor: Any) -> tuple[str, str | None] | None:
        """Run what the strategy asks for before its first trial (`Strategy.preparation`),
        hand the result back (`Strategy.prepared`) and store a snapshot with it, so a resume
        never prepares twice. Returns a final status when the job was cancelled or stopped
        meanwhile."""
        preparation: Preparation | None = self.strategy.preparation()
        if preparation is None:
            return None
        if isinstance(preparation, LongTask):
            stop, result = self._run_long_task(executor, preparation)
        else:
            stop, result = self._evaluate(preparation)
        if stop is not None:
            return stop, preparation.cancel_note if stop == "cancelled" else None
        self.strategy.prepared(result)
        self._take_snapshot()
        self._commit(self._elapsed())
        return None

    def _run_long_task(self, executor: Any, preparation: LongTask) -> tuple[str | None, Any]:
        """Run the task on the job's executor (it resumes from its own checkpoint), keeping
        the lease alive: (None, its result), or (why it stopped, None)."""
        executor.start_search(preparation.task)
        epochs = _SearchEpochs(self.phases, preparation.phase, self.storage, self.job_id)
        while (result := executor.poll_search(timeout=self.d.heartbeat_s)) is None:
            epochs.take(executor.search_progress())
            elapsed = self._elapsed()
            stop = self._beat(elapsed)
            if stop is not None:
                executor.stop_search()
                # the epochs it finished while stopping (all of them, if it was at its last)
                epochs.take(executor.search_progress(timeout=FINAL_PROGRESS_S), final=True)
                self._commit(elapsed)
                return stop, None
        # the search has returned, so every record it sent is held: wait for them
        epochs.take(executor.search_progress(timeout=FINAL_PROGRESS_S), final=True)
        for kind, path in preparation.artifacts:
            self.storage.jobs.add_artifact(self.job_id, kind, path)
        return None, result

    def _evaluate(self, preparation: Evaluations) -> tuple[str | None,
                                                            dict[str, dict[str, float]]]:
        """Evaluate the candidates whose stored values (under the evaluator's cache device)
        lack a wanted metric, on an executor of their own (batches in parallel): (None,
        {key: values}), or (why it stopped, the values so far)."""
        spec = EvaluatorSpec(self.spec.space, {**self.spec.space_args, **preparation.space_args},
                             preparation.evaluator, preparation.evaluator_args)
        device = _cache_device(spec, get_space(spec.space, **spec.space_args))
        keys = [key for key, _ in preparation.candidates]
        stored = stored_values(self.storage, self.space.name, keys, device) if device else {}
        values = {key: dict(stored.get(key, {})) for key in keys}
        todo = [(key, arch) for key, arch in preparation.candidates
                if any(m not in values[key] for m in preparation.metrics)]
        pool = _Counted(self.phases, preparation.phase, len(keys), len(keys) - len(todo))
        if not todo:
            return None, values
        executor = (self.d.executor_factory(self.spec, spec) if self.d.executor_factory
                    else make_executor(self.spec, spec, self.d.ray_address))
        try:
            return self._evaluate_all(executor, todo, values, pool), values
        finally:
            executor.shutdown()

    def _evaluate_all(self, executor: Any, todo: list[tuple[str, Arch]],
                      values: dict[str, dict[str, float]], pool: _Counted) -> str | None:
        """Evaluate `todo`, storing each result's measurements as they arrive (so a resume
        only evaluates what is missing) and adding what it reports to `values`; returns why
        it stopped early, if it did."""
        archs = dict(todo)
        queue = [TrialTask(i, key, arch, 1, dict(values[key]))
                 for i, (key, arch) in enumerate(todo)]
        size = max(1, min(8, len(queue) // max(1, 4 * self.spec.parallelism)))
        while queue or executor.in_flight():
            while queue and executor.free_slots() > 0:
                executor.submit(queue[:size])
                queue = queue[size:]
            rows = []
            for result in executor.poll(timeout=self.d.heartbeat_s):
                pool.add()  # scored or failed: done with
                if result.status != "completed":
                    continue  # it keeps its stored values only
                values[result.key].update(result.metrics)
                for m in result.measurements:
                    values[result.key][m["metric"]] = float(m["value"])
                    rows.append(MeasurementRow(result.key, archs[result.key], m["device"],
                                               m["metric"], float(m["value"]), m["source"]))
            if rows:
                self.storage.measurements.put(self.space.name, rows)
            stop = self._beat(self._elapsed())
            if stop is not None:
                return stop
        return None

    def _report(self) -> None:
        total = None if math.isinf(self.target) else int(self.target)
        objective = self.spec.objectives[0]
        best = None if self.best is None else objective.score(self.best)  # its own sign
        self.phases.update("trials", self.told, total,
                           {"best": best, "metric": objective.metric,
                            "completed": self.completed})
        if self.d.progress is not None:
            self.d.progress(self.told, total, self.best)


class _Counted:
    """A preparation's evaluations done of all (`done` of them were stored already)."""

    def __init__(self, phases: ProgressWriter, phase: str, total: int, done: int) -> None:
        self.phases, self.phase, self.total, self.done = phases, phase, total, done
        phases.update(phase, done, total, final=True)

    def add(self) -> None:
        self.done += 1
        self.phases.update(self.phase, self.done, self.total)


class _SearchEpochs:
    """A long task's epochs (its `progress` records, drained from the executor), written
    as the phase's epoch e of E with the epoch's numbers as detail. A resumed search starts
    from the epoch it had reached, until its first record says where it resumed."""

    def __init__(self, phases: ProgressWriter, phase: str, storage: Storage,
                 job_id: int) -> None:
        from .storage import job_progress

        self.phases, self.phase = phases, phase
        before = [p for p in _quietly(job_progress, storage, job_id) or []
                  if p.phase == phase]
        self.done = before[0].done if before else 0
        self.total = before[0].total if before else None
        self.detail = before[0].detail if before else {}
        phases.update(phase, self.done, self.total, self.detail, final=True)

    def take(self, records: list[dict[str, Any]], final: bool = False) -> None:
        for record in records:  # each one, so that the bar shows every epoch
            if record.get("epochs") is not None:
                self.total = int(record["epochs"])
            if record.get("epoch") is not None:
                self.done = int(record["epoch"])
                self.detail = epoch_detail(record)
            self.phases.update(self.phase, self.done, self.total, self.detail)
        if final:
            self.phases.update(self.phase, self.done, self.total, self.detail, final=True)


def _quietly(read: Callable[..., Any], *args: Any) -> Any:
    """`read(*args)`, or None when the database fails it (progress is only for showing)."""
    try:
        return read(*args)
    except Exception:  # noqa: BLE001
        return None
