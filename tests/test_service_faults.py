"""Regression tests for the service faults of issue 17: lost cancels, trials that kill their
process, SIGTERM under Ray, a serve process that looked dead while starting a job, the first
use of an empty database from several processes, jobs whose every trial failed, and trials
that hang. Each runs the real CLI, real processes and real databases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from nas import api
from nas.storage import Storage
from tests.conftest import ROOT, nb201_spec, nb201_table_subset, wait_until

TABLE = ROOT / "workers" / "data" / "nb201-cifar10.csv.gz"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), str(tmp_path)])
    return {**os.environ, "PYTHONPATH": path, "NAS_ARTIFACTS": str(tmp_path / "artifacts"),
            **extra}


def nas_cli(tmp_path: Path, url: str, *args: str, timeout: float = 180,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m nas --db URL ARGS` in a real process, run from `tmp_path`."""
    return subprocess.run([sys.executable, "-m", "nas", "--db", url, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout,
                          env=env or _env(tmp_path))


def status_of(storage: Storage, job: int) -> str:
    return storage.jobs.get(job).status


def _paused_job(storage: Storage, spec: dict[str, Any], after: int) -> int:
    """A job interrupted (as by Ctrl-C) after `after` trials: status `paused`."""
    job = api.submit(storage, spec)

    def interrupt(done: int, total: int | None, best: float | None) -> None:
        if done >= after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.run(storage, job, progress=interrupt)
    assert status_of(storage, job) == "paused"
    return job


# ---- item 1: a cancel right after a resume is kept ------------------------------------------
@pytest.mark.system
def test_a_cancel_right_after_a_detached_resume_stops_the_job(tmp_path):
    """`nas resume J` (detached driver) then at once `nas cancel J`: the job ends cancelled.
    Before, the driver's start withdrew the request of a job that had been cancelled before
    it started, so it ran to completion while `cancel` had said "cancelled"."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    budget = 6000  # many seconds of work: a driver that ignores the cancel is caught
    job = _paused_job(storage, nb201_spec(budget={"trials": budget}), after=20)
    resumed = nas_cli(tmp_path, url, "resume", str(job))
    assert resumed.returncode == 0, resumed.stderr
    cancelled = nas_cli(tmp_path, url, "cancel", str(job))
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split()[-1] in ("cancelled", "cancelling")
    log = tmp_path / "artifacts"
    wait_until(lambda: status_of(storage, job) == "cancelled"
               and storage.jobs.get(job).lease_owner is None,
               "the job to end cancelled", timeout=90,
               logs=tuple(log.rglob("driver.log")))
    time.sleep(3)  # a driver that had withdrawn the cancel would be running trials by now
    assert status_of(storage, job) == "cancelled"
    assert storage.trials.counts(job).get("completed", 0) < budget


def test_resume_withdraws_an_earlier_cancel(sqlite_url):
    """The user's own resume of a cancelled job withdraws that old cancel (it runs to the
    end); a cancel requested after the resume stops it."""
    storage = Storage(sqlite_url)
    job = api.submit(storage, nb201_spec(budget={"trials": 12}))
    assert storage.jobs.request_cancel(job) == "cancelled"
    assert api.run(storage, job) == "cancelled"  # running it is not resuming it
    api.reopen(storage, job)
    assert storage.jobs.request_cancel(job) == "cancelled"  # a new cancel, after the resume
    assert api.run(storage, job) == "cancelled"
    assert storage.trials.counts(job) == {}
    assert api.resume(storage, job) == "completed"
    assert storage.trials.counts(job) == {"completed": 12}


# ---- item 10: a job whose every trial failed has failed --------------------------------------

@pytest.mark.system
def test_a_job_whose_every_trial_failed_is_failed_with_the_reason(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    table = nb201_table_subset(tmp_path / "one.csv", rows=1)
    spec = nb201_spec(strategy="random", strategy_args={},
                      evaluator_args={"table": str(table)}, budget={"trials": 6})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    result = nas_cli(tmp_path, url, "submit", "job.yaml", "--wait", "--json")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "failed"
    assert data["trials"]["failed"] == 6 and data["trials"]["completed"] == 0
    # one cause over six architectures counts once (storage.trials.common_errors)
    assert data["error"] == ("every one of the 6 trials failed; the most common error (6 of 6): "
                             f"architecture <architecture> is not in table {table}"), data["error"]


def test_a_job_with_some_completed_trials_is_completed(tmp_path):
    storage = Storage(f"sqlite:///{tmp_path / 'nas.db'}")
    table = nb201_table_subset(tmp_path / "part.csv", rows=4000)  # about a quarter of the cells
    spec = nb201_spec(strategy="random", strategy_args={}, budget={"trials": 24},
                      evaluator_args={"table": str(table)})
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    counts = storage.trials.counts(job)
    assert counts.get("completed", 0) > 0 and counts.get("failed", 0) > 0, counts


# ---- item 2: a trial that kills its process cannot crash-loop the serve processes ------------
DATASET_MODULE = '''
import os
import signal
import time

import numpy as np


def load():
    """8x8 one-channel noise, 10 classes; kills or hangs the process when told to."""
    if os.environ.get("NAS_TEST_ABORT"):
        os.abort()
    if os.environ.get("NAS_TEST_HANG"):
        time.sleep(3600)
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8), dtype=np.float32)
    y = np.arange(40) % 10
    return x[:30], y[:30], x[30:], y[30:]


def evaluate(arch, ctx):
    """A user evaluate function (called for every trial); kills or hangs when told to."""
    if os.environ.get("NAS_TEST_ABORT"):
        os.abort()
    if os.environ.get("NAS_TEST_HANG"):
        time.sleep(3600)
    return {"score": float(sum(map(ord, str(arch))) % 97)}
'''


def _train_spec(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A one-epoch `train` job on the dataset function of `DATASET_MODULE`."""
    (tmp_path / "faultdata.py").write_text(textwrap.dedent(DATASET_MODULE))
    spec = nb201_spec(
        space_args={"channels": 4, "cells_per_stage": 1, "input_channels": 1,
                    "input_size": 8},
        strategy="random", strategy_args={}, evaluator="train",
        evaluator_args={"dataset": {"kind": "function", "function": "faultdata:load"},
                        "epochs": 1, "batch_size": 16, "measure_latency": False},
        objectives=[{"metric": "val_acc", "mode": "max"}], budget={"trials": 1},
        parallelism=1, batch_size=1)
    spec.update(overrides)
    return spec


def _function_spec(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A job whose evaluator is `faultdata:evaluate` (run for every trial), one at a time."""
    (tmp_path / "faultdata.py").write_text(textwrap.dedent(DATASET_MODULE))
    spec = nb201_spec(strategy="random", strategy_args={}, evaluator="faultdata:evaluate",
                      evaluator_args={}, objectives=[{"metric": "score", "mode": "max"}],
                      budget={"trials": 1}, parallelism=1, batch_size=1)
    spec.update(overrides)
    return spec


@pytest.mark.system
def test_a_trial_that_aborts_its_process_fails_after_max_attempts(tmp_path, monkeypatch):
    """The dataset function calls os.abort() in every serve process (as a crash in native
    code would). Each attempt kills the serve that runs it; with the attempt stored before
    the trial runs, the serve started after `max_attempts` deaths fails the trial, then the
    job, and runs the job queued behind it. Before, the attempt was stored only after the
    trial returned, so every serve that took the job over died, forever."""
    monkeypatch.syspath_prepend(str(tmp_path))
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    monkeypatch.chdir(tmp_path)
    crashing = api.submit(storage, _function_spec(tmp_path, max_attempts=2))
    behind = api.submit(storage, nb201_spec(budget={"trials": 8}))
    env = _env(tmp_path, NAS_TEST_ABORT="1")

    def both_done() -> bool:
        return status_of(storage, crashing) == "failed" and \
            status_of(storage, behind) == "completed"

    deaths = 0
    for attempt in range(5):
        log = tmp_path / f"serve-{attempt}.log"
        with open(log, "w") as out:
            serve = subprocess.Popen(
                [sys.executable, "-m", "nas", "--db", url, "serve", "--poll-s", "0.2",
                 "--lease-ttl-s", "2", "--allow-modules", "faultdata"], cwd=tmp_path, env=env,
                stdout=out, stderr=out)
        try:
            wait_until(lambda: serve.poll() is not None or both_done(),  # noqa: B023
                       "the serve process to die or finish the queue", timeout=120,
                       logs=(log,))
        finally:
            if serve.poll() is None:
                serve.send_signal(signal.SIGTERM)
                serve.wait(30)
            else:
                deaths += 1
                assert serve.returncode == -signal.SIGABRT, log.read_text()
        if both_done():
            break
    assert deaths == 2  # one per attempt, then no more
    job = storage.jobs.get(crashing)
    assert job.status == "failed", job
    assert "abandoned after 2 attempts" in job.error, job.error
    assert storage.trials.counts(crashing) == {"failed": 1}
    assert storage.trials.counts(behind) == {"completed": 8}


def test_a_trial_that_killed_its_batch_runs_alone_on_resume(sqlite_url):
    """Trials dispatched before and never finished are sent one per batch: a batch-mate of
    the trial that killed the driver is not killed again with it."""
    from nas.driver import Driver, _Run, _Slot

    storage = Storage(sqlite_url)
    job = api.submit(storage, nb201_spec(batch_size=4))
    run = _Run(Driver(storage, job), api.parse_spec(storage.jobs.get(job).spec),
               storage.jobs.get(job))
    run.to_dispatch = [_Slot(n, f"k{n}", {}, attempt=a)
                       for n, a in enumerate([0, 0, 1, 0, 0, 0, 0, 2, 1], start=1)]
    chunks = []
    while run.to_dispatch:
        chunks.append([slot.number for slot in run._next_chunk()])
    assert chunks == [[1, 2], [3], [4, 5, 6, 7], [8], [9]]


# ---- item 14: trial timeouts and a seconds budget that ends the job on time ------------------
@pytest.mark.integration
def test_a_hanging_trial_fails_at_its_timeout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = Storage(f"sqlite:///{tmp_path / 'nas.db'}")
    job = api.submit(storage, _function_spec(tmp_path, trial_timeout_s=1.5,
                                             budget={"trials": 2}))
    monkeypatch.setenv("NAS_TEST_HANG", "1")
    started = time.monotonic()
    assert api.run(storage, job) == "failed"
    assert time.monotonic() - started < 30
    errors = [line for line, _ in storage.trials.common_errors(job)]
    assert errors == ["timed out after 1.5 s (trial_timeout_s)"]
    assert storage.trials.counts(job) == {"failed": 2}


@pytest.mark.system
@pytest.mark.parametrize(("executor", "hangs"), [
    ("local", "trial"), ("local", "data"),
    pytest.param("ray", "trial", marks=pytest.mark.ray),
    pytest.param("ray", "data", marks=pytest.mark.ray)])
def test_the_seconds_budget_stops_a_job_with_a_hanging_trial_on_time(tmp_path, executor, hangs,
                                                                   monkeypatch):
    """`budget.seconds: 5` with an evaluate function that hangs, or a data set function that
    hangs while the evaluator is built: the job ends about 5 s in (before, it never ended),
    the trial failed saying why."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    monkeypatch.chdir(tmp_path)
    make = _function_spec if hangs == "trial" else _train_spec
    job = api.submit(Storage(url), make(tmp_path, budget={"seconds": 5}, executor=executor))
    started = time.monotonic()
    result = nas_cli(tmp_path, url, "resume", str(job), "--wait", "--json", timeout=120,
                     env=_env(tmp_path, NAS_TEST_HANG="1"))
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert took < 40, took  # a local Ray's start-up included
    assert data["status"] == "failed" and data["trials"]["failed"] >= 1, data
    assert "seconds budget (budget.seconds) ran out" in data["error"], data["error"]


# ---- item 5: SIGTERM pauses a job that runs on Ray ----------------------------------------------
def _slow_ray_spec(tmp_path: Path) -> Path:
    spec = nb201_spec(executor="ray", budget={"trials": 100000},
                      evaluator_args={"table": "nb201-cifar10", "delay_s": 0.02})
    path = tmp_path / "ray-job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _driver_pid(storage: Storage, job: int) -> int:
    owner = storage.jobs.get(job).lease_owner
    return int(owner.split(":")[1])


@pytest.mark.system
@pytest.mark.ray
@pytest.mark.parametrize("how", ["wait", "detached"])
def test_sigterm_pauses_a_job_that_runs_on_ray(tmp_path, how):
    """Ray's `ray.init` replaced the SIGTERM handler (sys.exit), so a SIGTERM failed the job
    ("SystemExit: 15") in `submit --wait` and in detached drivers; it must pause it, as
    SIGINT does, and `nas resume` then continues it."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    spec = _slow_ray_spec(tmp_path)
    command = [sys.executable, "-m", "nas", "--db", url, "submit", str(spec)]
    log = tmp_path / "submit.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command + (["--wait"] if how == "wait" else []), cwd=tmp_path,
                                env=_env(tmp_path), stdout=out, stderr=out)
    try:
        wait_until(lambda: storage.jobs.all() and storage.trials.counts(1).get("completed"),
                   "trials to complete on Ray", timeout=120,
                   logs=(log, *tmp_path.rglob("driver.log")))
        pid = proc.pid if how == "wait" else _driver_pid(storage, 1)
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: status_of(storage, 1) != "running", "the job to stop", timeout=60,
                   logs=(log, *tmp_path.rglob("driver.log")))
    finally:
        if proc.poll() is None and how == "detached":
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
    job = storage.jobs.get(1)
    assert job.status == "paused", job
    assert "SystemExit" not in (job.error or "")


# ---- item 6: a serve process stays alive to others while it starts a job ---------------------
@pytest.mark.system
@pytest.mark.ray
def test_a_serve_process_stays_alive_while_it_connects_to_ray(tmp_path):
    """Its heartbeat stopped while the main thread connected to Ray for a job it had just
    claimed (seconds), so `nas servers` showed it dead and a `nas submit` in that window
    started a detached driver beside it. Sampled every 0.1 s from before the claim until
    trials run: always alive (poll 0.5 s: dead after 5 s of silence; Ray took about 10)."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        serve = subprocess.Popen([sys.executable, "-m", "nas", "--db", url, "serve",
                                  "--poll-s", "0.5"], cwd=tmp_path, env=_env(tmp_path),
                                 stdout=out, stderr=out)
    try:
        wait_until(lambda: storage.servers.live(), "the serve process to register",
                   timeout=60, logs=(log,))
        job = api.submit(storage, nb201_spec(executor="ray", budget={"trials": 40}))
        samples = []
        deadline = time.monotonic() + 120
        while not storage.trials.counts(job).get("completed") and time.monotonic() < deadline:
            samples.append(bool(storage.servers.live()))
            time.sleep(0.1)
        assert storage.trials.counts(job).get("completed"), log.read_text()
        assert len(samples) > 10 and all(samples), (samples, log.read_text())
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)


# ---- item 7: the first use of an empty database from several processes at once ---------------
OPEN_AT_ONCE = '''
import sys, time
from nas.storage import Storage
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # every process opens it together
Storage(sys.argv[1])
'''


@pytest.mark.system
def test_several_processes_create_a_new_database_at_once(db_url, tmp_path):
    """Six processes open one empty database at the same instant (as several `nas serve`
    started on a new database do): all succeed and the schema is made once. Before, most
    failed: a false "not created by nas" on SQLite, a duplicate key on PostgreSQL."""
    from nas.storage import current_revision, head_revision

    start_at = time.time() + 4.0  # after every process has imported nas
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, db_url, str(start_at)],
                              cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(6)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outputs
    storage = Storage(db_url)
    assert current_revision(storage.engine) == head_revision()
    with storage.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
