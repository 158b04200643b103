"""Ray executor: one task per batch of trials; batches whose worker or node died are retried."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..task import EvaluatorSpec, TrialResult, TrialTask, evaluate_batch
from ..torch_device import gpu_share
from ..user_code import UserCode, keep_uploaded, upload
from ._base import Executor

if TYPE_CHECKING:
    from ..weight_sharing.task import SearchResult, SearchTask


def connect_ray(address: str | None = None) -> Any:
    """`ray.init` on a new local instance (address None) or an existing cluster, keeping this
    process's SIGINT and SIGTERM handlers (see `_signal_handlers_kept`).

    Address None means a Ray of this process's own (`"local"`), unless `RAY_ADDRESS` names
    one: Ray's own default would attach to whatever cluster was started last on this machine
    (`/tmp/ray/ray_current_cluster`), someone else's or one whose head is gone."""
    import ray

    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"
    if not ray.is_initialized():
        with _signal_handlers_kept():
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                ignore_reinit_error=True,
            )
    return ray


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Restore the SIGINT/SIGTERM handlers after the block. `ray.init` installs its own
    SIGTERM handler (`sys.exit`), which turned a SIGTERM meant to pause a job into a failed
    job ("SystemExit: 15"); ours pauses it. Handlers live in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)


#: A `NodeDiedError` names the node (its message is the only place Ray puts the id).
_DEAD_NODE = re.compile(r"node ID: ([0-9a-f]{16,})")


def batch_scheduling(ray: Any) -> str:
    """The batch tasks' strategy: "SPREAD" on a cluster of several live nodes, else "DEFAULT".

    Ray's default (hybrid) policy keeps tasks on the driver's node while it has free CPUs:
    measured here on a head and a second node of 2 CPUs each, a job at parallelism 2 ran all
    its 200 trials on the head, with SPREAD 108 and 92 (and with 50 ms trials on 1-CPU nodes
    the default took 6.3 s against 5.5 s, 108/92 trials against 100/100)."""
    alive = sum(1 for node in ray.nodes() if node["Alive"])
    return "SPREAD" if alive > 1 else "DEFAULT"


def _avoiding(remote: Any, dead_nodes: set[str]) -> Any:
    """`remote` with a label selector that keeps it off `dead_nodes`.

    A node killed outright is declared dead by the GCS only after its health checks fail
    (about 15 s with Ray's defaults), while its tasks' owner learns within a second
    (`NodeDiedError`). Until then Ray may place a resubmitted batch on the dead node, where it
    waits out the health checks: measured, a job's recovery from a SIGKILLed node took 17.5 s
    that way and 5 s with the dead node excluded."""
    if not dead_nodes:
        return remote
    ids = sorted(dead_nodes)
    selector = f"!{ids[0]}" if len(ids) == 1 else f"!in({', '.join(ids)})"
    try:
        return remote.options(label_selector={"ray.io/node-id": selector})
    except ValueError as exc:  # a Ray without label selectors: wait for the GCS instead
        if "Invalid option keyword" not in str(exc):
            raise
        return remote


class _ShippedCode:
    """A job's user modules, uploaded once to the cluster, and the runtime environment
    (`py_modules` URIs) of the job's tasks and actors, kept pinned while the job submits."""

    #: re-pin the packages this often: Ray's GCS deletes a package no Ray job references
    #: 600 s after its last pin, and a task's own runtime environment is no such reference
    #: (nodes that ran the job keep their copy, a node that joins later would find none)
    PIN_EVERY_S = 120.0

    def __init__(self, code: UserCode) -> None:
        self.uris = upload(code.paths.values())
        self.pinned_at = time.monotonic()

    def runtime_env(self) -> dict[str, Any]:
        return {"py_modules": list(self.uris)}

    def keep_pinned(self) -> None:
        """Called at every submit and poll: a GCS call once every `PIN_EVERY_S`."""
        if time.monotonic() - self.pinned_at >= self.PIN_EVERY_S:
            keep_uploaded(self.uris)
            self.pinned_at = time.monotonic()


class RayExecutor(Executor):
    """`max_attempts` bounds how often a trial is run when its worker process or node dies.
    `scheduling` is the batch tasks' Ray scheduling strategy (default: `batch_scheduling`).
    With `gpu_trials` each batch task asks for `gpu_share` of the cluster's GPUs (nothing on
    a cluster without GPUs), so the trials in flight share them. `user_code` (the job's
    modules outside installed packages) travels to the workers in the runtime environment of
    every task and actor of the job; without it, tasks get no runtime environment at all."""

    def __init__(
        self,
        spec: EvaluatorSpec,
        slots: int,
        address: str | None = None,
        max_attempts: int = 3,
        num_cpus: float = 1.0,
        scheduling: str | None = None,
        gpu_trials: bool = False,
        user_code: UserCode | None = None,
    ) -> None:
        super().__init__(spec, slots)
        self.ray = connect_ray(address)
        self.max_attempts = max_attempts
        self.scheduling = scheduling or batch_scheduling(self.ray)
        self.num_gpus = (gpu_share(self.ray.cluster_resources().get("GPU", 0), slots)
                         if gpu_trials else 0.0)
        self._code = _ShippedCode(user_code) if user_code is not None else None
        self._remote = self.ray.remote(num_cpus=num_cpus, num_gpus=self.num_gpus, max_retries=0,
                                       scheduling_strategy=self.scheduling,
                                       **self._env())(evaluate_batch)
        self._spec_ref = self.ray.put(spec)
        self._batches: dict[Any, list[TrialTask]] = {}
        self._dead_nodes: set[str] = set()
        self._submitter = self._remote  # the remote function, kept off nodes known dead
        self._search: tuple[Any, SearchTask] | None = None
        self._search_records: Any = None  # the search's `_Records` actor
        self._pruner: Any = None

    def start_pruner(self, config: dict[str, Any],
                     reports: list[tuple[int, int, str, float]]) -> Any:
        """A named actor holding the job's pruner (one per executor, so per driver session:
        it dies with the driver and a resume starts a fresh one from the stored reports);
        tasks carry a handle that finds it by name."""
        from ..early_stopping import PrunerActor, RayPrunerHandle

        name = f"nas-pruner-{os.getpid()}-{os.urandom(4).hex()}"
        namespace = self.ray.get_runtime_context().namespace
        self._pruner = self.ray.remote(num_cpus=0, **self._env())(PrunerActor).options(
            name=name, namespace=namespace).remote(config, reports)
        self.ray.get(self._pruner.__ray_ready__.remote())
        return RayPrunerHandle(name, namespace, config["metric"])

    def _env(self) -> dict[str, Any]:
        """The `runtime_env` option of the job's tasks and actors (none without user code)."""
        return {} if self._code is None else {"runtime_env": self._code.runtime_env()}

    def _keep_pinned(self) -> None:
        if self._code is not None:
            self._code.keep_pinned()

    def submit(self, batch: list[TrialTask]) -> None:
        self._keep_pinned()
        ref = self._submitter.remote(self._spec_ref, batch)
        self._batches[ref] = batch

    def in_flight(self) -> int:
        return len(self._batches)

    def poll(self, timeout: float) -> list[TrialResult]:
        self._keep_pinned()
        if not self._batches:
            return []
        ready, _ = self.ray.wait(list(self._batches), num_returns=1, timeout=timeout)
        if ready:  # collect everything else that is already done, without waiting
            ready, _ = self.ray.wait(list(self._batches), num_returns=len(self._batches),
                                     timeout=0)
        results: list[TrialResult] = []
        for ref in ready:
            batch = self._batches.pop(ref)
            try:
                results.extend(self.ray.get(ref))
            except (self.ray.exceptions.WorkerCrashedError,
                    self.ray.exceptions.NodeDiedError,
                    self.ray.exceptions.ObjectLostError,
                    self.ray.exceptions.RayTaskError) as exc:
                results.extend(self._retry_or_fail(batch, exc))
        return results

    def _retry_or_fail(self, batch: list[TrialTask], exc: Exception) -> list[TrialResult]:
        """Resubmit the trials of a lost batch, or fail those out of attempts."""
        reason = type(exc).__name__
        self._note_dead_nodes(exc)
        retry = [replace(t, attempt=t.attempt + 1) for t in batch
                 if t.attempt < self.max_attempts]
        if retry:
            self.submit(retry)
        now = time.time()
        return [
            TrialResult(t.number, t.key, "failed", t.attempt,
                        error=f"worker lost ({reason}) on attempt {t.attempt} of "
                              f"{self.max_attempts}: {str(exc).splitlines()[0][:300]}",
                        started_at=now, finished_at=now)
            for t in batch if t.attempt >= self.max_attempts
        ]

    def _note_dead_nodes(self, exc: Exception) -> None:
        """Keep later tasks off the nodes that `exc` says are dead (ids are never reused)."""
        dead = set(_DEAD_NODE.findall(str(exc))) - self._dead_nodes
        if dead:
            self._dead_nodes |= dead
            self._submitter = _avoiding(self._remote, self._dead_nodes)

    # ---- a weight-sharing search: one task, on a GPU when the cluster has one -------------------
    def start_search(self, task: SearchTask) -> None:
        from ..weight_sharing.task import run_search

        gpus = 1 if self.ray.cluster_resources().get("GPU", 0) >= 1 else 0
        cpus = 1
        if task.workers > 1:  # it only coordinates: its Ray Train ranks hold the resources
            cpus = gpus = 0
        remote = self.ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0,
                                 **self._env())(run_search)
        if self._search_records is None:  # kept over restarts of the search
            self._search_records = self.ray.remote(num_cpus=0)(_Records).remote()
        progress = _SendRecord(self._search_records)
        self._search = (_avoiding(remote, self._dead_nodes).remote(task, None, progress), task)

    def search_progress(self, timeout: float = 1.0) -> list[dict[str, Any]]:
        """The records the search sent its `_Records` actor since the last call (none when
        the actor does not answer within `timeout`: progress is only for showing)."""
        if self._search_records is None:
            return []
        try:
            return self.ray.get(self._search_records.drain.remote(), timeout=timeout)
        except Exception:  # noqa: BLE001
            return []

    def poll_search(self, timeout: float) -> SearchResult | None:
        """The result; a search whose worker or node died is started again (it resumes from
        its last checkpoint) up to `max_attempts` times."""
        if self._search is None:
            raise RuntimeError("no search was started")
        self._keep_pinned()
        ref, task = self._search
        ready, _ = self.ray.wait([ref], num_returns=1, timeout=timeout)
        if not ready:
            return None
        self._search = None
        try:
            return self.ray.get(ref)
        except (self.ray.exceptions.WorkerCrashedError, self.ray.exceptions.NodeDiedError,
                self.ray.exceptions.ObjectLostError) as exc:
            self._note_dead_nodes(exc)
            if task.attempt >= self.max_attempts:
                raise RuntimeError(f"the search's worker was lost {task.attempt} times; last: "
                                   f"{type(exc).__name__}") from exc
            self.start_search(replace(task, attempt=task.attempt + 1))
            return None
        except self.ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def stop_search(self) -> None:
        """Kills the search task (its last checkpoint stays for a resume)."""
        if self._search is not None:
            self.ray.cancel(self._search[0], force=True)
            self._search = None
        if self._search_records is not None:
            self.ray.kill(self._search_records)
            self._search_records = None

    def shutdown(self) -> None:
        self.stop_search()
        for ref in list(self._batches):
            self.ray.cancel(ref, force=True)
        self._batches.clear()
        if self._pruner is not None:
            self.ray.kill(self._pruner)
            self._pruner = None


class _Records:
    """A Ray actor holding a search's progress records until the driver drains them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def drain(self) -> list[dict[str, Any]]:
        records, self.records = self.records, []
        return records


class _SendRecord:
    """`run_search`'s `progress` on a worker: sends each record to the `_Records` actor and
    waits until it holds it (at most `ACK_S`), so that every record of a search that has
    returned is there for the driver's last drain (without the wait, the last epoch's
    record could land after it under load and the job's progress stopped one epoch short).
    A record the actor does not take is only a record not shown."""

    ACK_S = 10.0

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __call__(self, record: dict[str, Any]) -> None:
        import ray

        try:
            ray.get(self.actor.add.remote(record), timeout=self.ACK_S)
        except Exception:  # noqa: BLE001 - progress never fails a search
            pass
