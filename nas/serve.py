"""`nas serve`: a long-running process that claims queued jobs from the database and runs them.

What it claims (`Jobs.claim`, oldest job first): `pending` jobs, and `running` jobs
whose lease expired, i.e. whose driver died (a killed `nas serve`, `nas drive` or `nas submit
--wait`): those are taken over and resume from the database like `nas resume` does. `paused`,
`failed` and `cancelled` jobs are left alone until `nas resume` puts them back in the queue.

The claim writes the lease in the same transaction that finds the job, so of several serve
processes sharing one database (on any number of machines) exactly one gets each job. The
process's `owner` (host:pid:random) is the lease owner of every job it runs; a heartbeat
thread writes its registry row (`servers`) and extends those leases every tick while the main
thread claims jobs, and each job's `Driver` runs in a thread of its own and heartbeats its
lease too. When
the process dies, its leases expire after `lease_ttl_s` and another serve process takes the
jobs over: trials that were in flight are run again, finished ones are kept, the job ends
with exactly its budget. A driver that lost its lease (a takeover after a stall) stops at its
next write, so a job is never run by two drivers at once.

SIGINT / SIGTERM (the CLI turns both into KeyboardInterrupt in the main thread) stop the
process cleanly: it sets the stop event every driver of it was given (`Driver(stop=...)`;
signals only reach the main thread), and each driver pauses its job at its next heartbeat,
exactly as a SIGINT pauses `nas drive`; the leases are released and the registry row
deleted. `nas resume JOB` continues a paused job (queues it when a serve process is alive).
"""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DBAPIError

from .driver import Driver
from .errors import DatabaseUnavailableError, LeaseHeldError, NasError
from .storage import Storage, new_owner

Log = Callable[[str], None]


def print_log(line: str) -> None:
    """One timestamped line on stdout, flushed (serve output usually goes to a log file)."""
    sys.stdout.write(f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    sys.stdout.flush()


def check_options(poll_s: float, lease_ttl_s: float, max_jobs: int, name: str | None) -> None:
    """Raise NasError naming the first bad option."""
    if not (math.isfinite(poll_s) and poll_s > 0):
        raise NasError(f"--poll-s must be a positive number of seconds, got {poll_s}")
    if not (math.isfinite(lease_ttl_s) and lease_ttl_s >= 1):
        raise NasError(f"--lease-ttl-s must be at least 1 second, got {lease_ttl_s}")
    if max_jobs < 1:
        raise NasError(f"--max-jobs must be at least 1, got {max_jobs}")
    if name is not None and not 1 <= len(name) <= 200:
        raise NasError("--name must have 1 to 200 characters")
    if name is not None and not name.isprintable():  # `nas servers` prints it to others
        raise NasError("--name must be printable text (no control characters)")


def parse_allow_modules(text: str | None) -> frozenset[str]:
    """The packages of `--allow-modules pkg1,pkg2` (empty: none); NasError when malformed."""
    if text is None:
        return frozenset()
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if not name.isidentifier():
            raise NasError("--allow-modules must be comma-separated top-level package names "
                           f"(e.g. mypkg,otherpkg), got {text!r}")
    return frozenset(names)


def refused_modules(spec: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    """The modules a stored spec references (`spec_modules`) whose top-level package is not
    in `allowed`: a shared serve process runs no code that its operator did not allow."""
    from .spec import spec_modules

    return [m for m in spec_modules(spec) if m.split(".")[0] not in allowed]


def refusal(modules: list[str], allowed: frozenset[str]) -> str:
    """The one line a refused job's error holds."""
    given = f"it allows only {', '.join(sorted(allowed))}" if allowed else "none were given"
    return (f"the job references module {', '.join(modules)}, which this serve process may not "
            f"import: start `nas serve --allow-modules {modules[0].split('.')[0]}` ({given})")


class Server:
    """Claims jobs and runs up to `max_jobs` of them at once, each in a driver thread."""

    def __init__(
        self,
        storage: Storage,
        *,
        poll_s: float = 1.0,
        lease_ttl_s: float = 30.0,
        max_jobs: int = 1,
        once: bool = False,
        name: str | None = None,
        ray_address: str | None = None,
        allow_modules: frozenset[str] = frozenset(),
        log: Log = print_log,
    ) -> None:
        check_options(poll_s, lease_ttl_s, max_jobs, name)
        self.storage = storage
        self.poll_s = poll_s
        self.lease_ttl_s = lease_ttl_s
        self.max_jobs = max_jobs
        self.once = once
        self.owner = new_owner()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.ray_address = ray_address
        #: top-level packages whose modules a job may reference (`--allow-modules`)
        self.allow_modules = frozenset(allow_modules)
        self.log = log
        #: the tick of the claims loop and of the heartbeat thread
        self.tick_s = min(poll_s, lease_ttl_s / 3)
        self.started = 0
        self._threads: dict[int, threading.Thread] = {}
        self._threads_lock = threading.Lock()
        self._stopping = threading.Event()
        self._beating = threading.Event()

    # ---- the supervisor loop (main thread) ----------------------------------------------------
    def run(self) -> int:
        """Serve until interrupted (or, with `once`, until one job ran or none was queued);
        returns how many jobs this process started."""
        self.storage.servers.register(self.name, self.owner, self.poll_s, self.max_jobs)
        self._beating.set()
        beat = threading.Thread(target=self._beat, name="nas-serve-heartbeat", daemon=True)
        beat.start()
        self.log(f"serve {self.name} (owner {self.owner}) on {self.storage.url}: polling every "
                 f"{self.poll_s:g}s, up to {self.max_jobs} job(s) at once, lease "
                 f"{self.lease_ttl_s:g}s")
        try:
            self._loop()
        except KeyboardInterrupt:
            self.log("interrupted: pausing the running jobs and stopping")
        finally:
            self._stop(beat)
        return self.started

    def _beat(self) -> None:
        """The heartbeat thread: every tick, mark this process alive in the registry and
        extend the leases of the jobs it runs. A thread of its own, so that the process stays
        alive to others while its main thread is busy (connecting to Ray for a job it just
        claimed takes seconds): before, a `nas submit` in that window found no live serve
        and started a detached driver beside it."""
        while self._beating.is_set():
            try:
                if not self.storage.servers.heartbeat(self.owner, self._running(),
                                                      self.lease_ttl_s):
                    self.storage.servers.register(self.name, self.owner, self.poll_s,
                                                  self.max_jobs)
            except (DBAPIError, DatabaseUnavailableError) as exc:  # an outage: keep beating
                self.log(f"database error in the heartbeat (retrying): {_first_line(exc)}")
            time.sleep(self.tick_s)

    def _running(self) -> list[int]:
        with self._threads_lock:
            return list(self._threads)

    def _loop(self) -> None:
        while True:
            try:
                if self._tick():
                    return
            except (DBAPIError, DatabaseUnavailableError) as exc:  # an outage: keep serving
                self.log(f"database error (retrying): {_first_line(exc)}")
            time.sleep(self.tick_s)

    def _tick(self) -> bool:
        """One supervisor step; True when the process should exit (`once` and done)."""
        self._reap()
        if self.once and self.started:
            return not self._threads
        while len(self._threads) < self.max_jobs and not (self.once and self.started):
            job_id = self.storage.jobs.claim(self.owner, self.lease_ttl_s, self._running())
            if job_id is None:
                break
            self._start(job_id)
        if self.once and not self.started:
            self.log("no job to run")
            return True
        return False

    def _reap(self) -> None:
        with self._threads_lock:
            for job_id, thread in list(self._threads.items()):
                if not thread.is_alive():
                    del self._threads[job_id]

    def _start(self, job_id: int) -> None:
        job = self.storage.jobs.get(job_id)
        how = "taking over" if job.status == "running" else "claimed"
        self.log(f"{how} job {job_id} [{job.name}]")
        self.started += 1
        if self._refuse(job_id, job.spec):
            return
        if job.spec.get("executor", "ray") == "ray":
            try:
                self._connect_ray()
            except Exception as exc:  # the driver's own attempt reports it on the job
                self.log(f"cannot connect to Ray here: {type(exc).__name__}: {exc}")
        thread = threading.Thread(target=self._run_job, args=(job_id,), daemon=True,
                                  name=f"nas-job-{job_id}")
        with self._threads_lock:
            self._threads[job_id] = thread
        thread.start()

    def _refuse(self, job_id: int, spec: dict[str, Any]) -> bool:
        """Mark the job failed, without importing anything, when it references a module
        outside `--allow-modules`; True when refused."""
        modules = refused_modules(spec, self.allow_modules)
        if not modules:
            return False
        message = refusal(modules, self.allow_modules)
        self.log(f"job {job_id} failed: {message}")
        self.storage.jobs.set_status(job_id, "failed", owner=self.owner, error=message)
        return True

    def _connect_ray(self) -> None:
        """Connect to Ray here, in the main thread (ray.init expects it), before a driver
        thread needs it."""
        from workers.executors.ray import connect_ray

        connect_ray(self.ray_address)  # it keeps this process's signal handlers

    def _stop(self, beat: threading.Thread) -> None:
        """Stop the drivers (each pauses its job at its next heartbeat), wait for them
        (the heartbeat thread keeps their leases meanwhile), release what is still leased
        and leave the registry."""
        self._stopping.set()
        while self._running():
            self._reap()
            with self._threads_lock:
                threads = list(self._threads.values())
            for thread in threads:
                thread.join(self.tick_s)
        self._beating.clear()
        beat.join()
        self.storage.jobs.release_leases(self.owner)
        self.storage.servers.unregister(self.owner)
        self.log(f"serve {self.name} stopped")

    # ---- one job (a driver thread) ------------------------------------------------------------
    def _run_job(self, job_id: int) -> None:
        try:
            status = self._drive(job_id)
            self.log(f"job {job_id} paused; `nas resume {job_id}` continues it"
                     if status == "paused" else f"job {job_id} {status}")
        except KeyboardInterrupt:
            self.log(f"job {job_id} paused; `nas resume {job_id}` continues it")
        except LeaseHeldError as exc:
            self.log(f"job {job_id}: {exc}")
        except DatabaseUnavailableError as exc:  # its lease expires; it is claimed again
            self.log(f"job {job_id} stopped: {exc}")
        except Exception as exc:  # keep serving the other jobs
            self.log(f"job {job_id} failed: {type(exc).__name__}: {exc}")
            self._fail(job_id, exc)
        finally:
            try:  # a driver that ended abnormally may still hold the lease
                self.storage.jobs.release_leases(self.owner, job_id)
            except (DBAPIError, DatabaseUnavailableError):
                pass  # it expires after lease_ttl_s

    def _fail(self, job_id: int, exc: Exception) -> None:
        """Mark the job failed unless its driver did (it does once the job runs; an error
        before that, such as a stored spec this version cannot read, would otherwise send
        the job back to the queue to fail again at every tick)."""
        try:
            self.storage.jobs.set_status(job_id, "failed", owner=self.owner,
                                         error=f"{type(exc).__name__}: {exc}")
        except (DBAPIError, DatabaseUnavailableError):
            pass

    def _drive(self, job_id: int) -> str:
        if self._stopping.is_set():
            raise KeyboardInterrupt
        driver = Driver(self.storage, job_id, ray_address=self.ray_address,
                        lease_ttl_s=self.lease_ttl_s, heartbeat_s=min(2.0, self.lease_ttl_s / 3),
                        stop=self._stopping)
        driver.owner = self.owner  # the lease claimed for it: the process's owner
        return driver.run()


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
