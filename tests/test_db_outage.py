"""The database goes away mid-job: the driver retries with backoff and loses no result.

PostgreSQL is stopped (cleanly, then by a crash) and started again while a real driver
process runs a job against it; the job must complete with every trial stored exactly once,
the same trials as an undisturbed run. Retried writes must be safe when the first attempt
did land (a connection lost during COMMIT).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from nas import api
from nas.errors import DatabaseUnavailableError
from nas.storage import NewTrial, ScoredResult, Storage, Trials, new_owner
from nas.storage.schema import measurements, trial_device_values, trials
from tests.conftest import ROOT, nb201_spec, skip_or_fail
from tests.private_pg import PrivatePostgres, postgres_bindir

BUDGET = 240


@pytest.fixture(scope="module")
def private_pg():
    bindir = postgres_bindir()
    if bindir is None:
        skip_or_fail("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    server = PrivatePostgres(bindir)
    server.start()
    yield server
    server.remove()


def _spec() -> dict:
    # 40 ms per trial, 2 workers: about 5 s of evaluation, so the outages land mid-job
    return nb201_spec(budget={"trials": BUDGET}, evaluator_args={
        "table": "nb201-cifar10", "latency_table": "hw-nas-bench-cifar10", "delay_s": 0.04},
        parallelism=2, batch_size=1, snapshot_every=5, seed=3)


def _with_pixel3_latency(storage: Storage, job: int) -> Counter:
    """trial id -> its rows of pixel3 latency (HW-NAS-Bench lacks some cells)."""
    with storage.engine.connect() as conn:
        return Counter(conn.execute(select(trial_device_values.c.trial_id)
                                    .join(trials, trials.c.id == trial_device_values.c.trial_id)
                                    .where(trials.c.job_id == job,
                                           trial_device_values.c.device == "pixel3")).scalars())


def _wait_for(storage: Storage, job: int, proc: subprocess.Popen, completed: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if storage.trials.counts(job).get("completed", 0) >= completed:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not reach {completed} completed trials")


def _outage(server: PrivatePostgres, mode: str, seconds: float) -> None:
    server.stop(mode)
    time.sleep(seconds)
    server.start()


#: The job runs in `nas drive`, or in a `nas serve` process (its supervisor's heartbeats and
#: claims ride out the outage too).
RUNNERS = {"drive": lambda job: ["drive", str(job)],
           "serve": lambda job: ["serve", "--once", "--poll-s", "0.5", "--lease-ttl-s", "60"]}


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_postgres_restarts_mid_job_and_every_trial_is_stored_once(runner, private_pg,
                                                                  sqlite_url):
    reference = Storage(sqlite_url)
    ref_job = api.submit(reference, _spec())
    api.run(reference, ref_job)
    expected = [r.key for r in reference.trials.load(ref_job)]
    expected_latencies = len(_with_pixel3_latency(reference, ref_job))

    url = private_pg.new_database(f"restart_{runner}")
    storage = Storage(url)
    job = api.submit(storage, _spec())
    proc = subprocess.Popen([sys.executable, "-m", "nas", "--db", url, *RUNNERS[runner](job)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "NAS_DB_RETRY_S": "120"})
    try:
        _wait_for(storage, job, proc, 40)
        _outage(private_pg, "fast", 3.0)     # a clean restart: sessions are terminated
        _wait_for(storage, job, proc, 130)
        _outage(private_pg, "immediate", 2.0)  # a crash: in-flight transactions are lost
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "retrying" in stderr, "the driver never saw the outage"

    job_row = storage.jobs.get(job)
    assert job_row.status == "completed"
    rows = storage.trials.load(job)
    assert [r.number for r in rows] == list(range(1, BUDGET + 1))
    assert all(r.status == "completed" and r.attempt >= 1 for r in rows)
    assert [r.key for r in rows] == expected, "the outage changed which trials ran"
    with storage.engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(trials).where(
            trials.c.job_id == job)).scalar_one()
        duplicates = conn.execute(select(func.count()).select_from(
            select(measurements.c.architecture_id, measurements.c.device,
                   measurements.c.metric, measurements.c.source)
            .group_by(measurements.c.architecture_id, measurements.c.device,
                      measurements.c.metric, measurements.c.source)
            .having(func.count() > 1).subquery())).scalar_one()
    assert stored == BUDGET
    per_trial = _with_pixel3_latency(storage, job)
    assert len(per_trial) == expected_latencies and set(per_trial.values()) == {1}
    assert duplicates == 0
    storage.close()


@pytest.mark.integration
def test_a_lasting_outage_ends_in_one_clear_error(private_pg, monkeypatch):
    storage = Storage(private_pg.url)
    job = api.submit(storage, nb201_spec(name="outage"))
    monkeypatch.setenv("NAS_DB_RETRY_S", "1.5")
    private_pg.stop("fast")
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match=r"unavailable for 1.5s .*jobs\.get"):
            storage.jobs.get(job)
        assert 1.4 <= time.monotonic() - started < 10
    finally:
        private_pg.start()
    assert storage.jobs.get(job).status == "pending"  # the pool reconnects by itself
    storage.close()


@pytest.mark.integration
def test_a_short_outage_is_waited_out(private_pg):
    storage = Storage(private_pg.url)
    job = api.submit(storage, nb201_spec(name="blip"))
    private_pg.stop("fast")
    restart = threading.Timer(1.5, private_pg.start)
    restart.start()
    try:
        assert storage.jobs.get(job).name == "blip"  # retried until the server is back
    finally:
        restart.join()
    storage.close()


def _step(storage: Storage, job: int, owner: str, replay: bool) -> dict[int, tuple[int, int]]:
    """A step with new trials and the results of trials 1-2, called without the retry."""
    arch = {"cell": "x"}
    new = [NewTrial(n, f"|key-{n}|", arch) for n in (3, 4)]
    done = storage.trials.load(job)[:2]
    results = [ScoredResult(r.id, "completed", 1, "w:1", 1.0, 2.0, {"valid_acc": 90.0 + i},
                            90.0 + i, [90.0 + i], True, None, r.architecture_id, 10, 20,
                            [{"device": "pixel3", "metric": "latency_ms", "value": 4.0 + i,
                              "source": "benchmark"}], weights=b"w" * (i + 1))
               for i, r in enumerate(done)]
    commit = Trials.commit_step.__wrapped__  # the undecorated method: one attempt
    return commit(storage.trials, job, owner, "nb201", new, results, [], ({"s": 1}, 2, 4), 1.0,
                  keep_weights=5, replay=replay)


def test_a_step_written_again_after_it_landed_changes_nothing(db_url):
    storage = Storage(db_url)
    job = api.submit(storage, nb201_spec())
    owner = new_owner()
    storage.jobs.acquire_lease(job, owner, 30)
    storage.trials.commit_step(job, owner, "nb201", [NewTrial(n, f"|key-{n}|", {"cell": "x"})
                                                     for n in (1, 2)])
    first = _step(storage, job, owner, replay=False)

    def snapshot() -> dict:
        with storage.engine.connect() as conn:
            return {table.name: sorted(map(tuple, conn.execute(select(table)).all()), key=repr)
                    for table in (trials, measurements, trial_device_values)}

    before = snapshot()
    again = _step(storage, job, owner, replay=True)  # the COMMIT landed, the reply was lost
    assert again == first
    assert snapshot() == before
    assert len(storage.trials.load(job)) == 4
    assert storage.trials.weights(job, 2) == b"ww"
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        _step(storage, job, owner, replay=False)  # without replay a duplicate is an error
