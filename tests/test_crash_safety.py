"""kill -9 of the driver at random moments: `nas resume` finishes the job exactly.

The driver is deterministic (results are told in trial order), so an interrupted job must
end with the very same trials as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select, text

from nas import api
from nas.errors import LeaseHeldError
from nas.storage import Storage
from nas.storage.schema import trials as trials_table
from tests.conftest import ROOT, nb201_spec

pytestmark = pytest.mark.system

BUDGET = 300
KILLS = 10


def _spec() -> dict:
    # 15 ms per trial and a window of 4 stretch the job to a few seconds, so kills land
    # mid-flight: while trials are dispatched, stored, told and snapshotted.
    return nb201_spec(budget={"trials": BUDGET}, evaluator_args={"delay_s": 0.015},
                      parallelism=2, batch_size=2, snapshot_every=7, seed=11)


def _driver(url: str, job: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas", "--db", url, "drive", str(job)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _completed(storage: Storage, job: int) -> dict[int, tuple[str, str]]:
    with storage.engine.connect() as conn:
        rows = conn.execute(select(trials_table.c.number, trials_table.c.architecture_id,
                                   trials_table.c.metrics)
                            .where(trials_table.c.job_id == job,
                                   trials_table.c.status == "completed")).all()
    return {n: (a, json.dumps(m, sort_keys=True)) for n, a, m in rows}


def _wait_for_progress(storage: Storage, job: int, proc: subprocess.Popen, at_least: int) -> int:
    deadline = time.time() + 60
    while time.time() < deadline:
        done = len(_completed(storage, job))
        if done >= at_least or proc.poll() is not None:
            return done
        time.sleep(0.02)
    raise AssertionError("driver made no progress in 60 s")


def _reference(storage: Storage) -> list[tuple[int, str]]:
    """(number, key) of the trials of an undisturbed run of the same spec."""
    reference = api.submit(storage, _spec())
    api.run(storage, reference)
    return [(r.number, r.key) for r in storage.trials.load(reference)]


def _resume_to_the_end(db_url: str, storage: Storage, job: int,
                       seen: dict[int, tuple[str, str]], expected: list[tuple[int, str]]) -> None:
    """`nas resume --wait`, then: exactly the budget completed, none lost or redone, the
    same trials as the undisturbed run."""
    result = subprocess.run([sys.executable, "-m", "nas", "--db", db_url, "resume", str(job),
                             "--wait", "--json"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["trials"]["completed"] == BUDGET
    rows = storage.trials.load(job)
    assert [r.number for r in rows] == list(range(1, BUDGET + 1))
    assert all(r.status == "completed" for r in rows)
    assert len({r.key for r in rows}) == BUDGET
    final = _completed(storage, job)
    assert all(final[n] == v for n, v in seen.items()), "a completed trial was lost or redone"
    assert [(r.number, r.key) for r in rows] == expected


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(db_url):
    storage = Storage(db_url)
    expected = _reference(storage)
    job = api.submit(storage, _spec())
    rng = random.Random(20261121)
    kills, seen = 0, {}
    while kills < KILLS:
        proc = _driver(db_url, job)
        done = _wait_for_progress(storage, job, proc, len(seen) + rng.randint(3, 22))
        time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is not None:
            break  # finished before we could kill it
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        now = _completed(storage, job)
        lost = {n: v for n, v in seen.items() if now.get(n) != v}
        assert not lost, f"completed trials changed or vanished after kill {kills}: {lost}"
        assert len(now) >= done
        seen = now
    assert kills == KILLS, f"only {kills} kills landed before the job finished"
    _resume_to_the_end(db_url, storage, job, seen, expected)


_PAUSE_SNAPSHOT_WRITES = """
CREATE TABLE fault_pause (armed boolean);
CREATE FUNCTION pause_snapshot_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.snapshot_told IS DISTINCT FROM OLD.snapshot_told
     AND EXISTS (SELECT 1 FROM fault_pause) THEN
    PERFORM pg_sleep(60);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER pause_snapshot_write AFTER UPDATE ON jobs
  FOR EACH ROW EXECUTE FUNCTION pause_snapshot_write();
"""


def _backend_writing_a_snapshot(engine, deadline_s: float = 60.0) -> int:  # noqa: ANN001
    """The pid of the PostgreSQL backend held inside the snapshot write by the trigger."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        with engine.connect() as conn:
            pid = conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                "AND datname = current_database() AND pid <> pg_backend_pid()")).scalar()
        if pid is not None:
            return pid
        time.sleep(0.02)
    raise AssertionError("the driver wrote no snapshot")


@pytest.mark.slow
def test_kill_9_during_a_strategy_snapshot_write(pg_url):
    """A trigger holds the driver inside the transaction that writes a snapshot (the jobs row
    already updated, the step's other writes pending); the driver is killed there. PostgreSQL
    rolls the whole step back: the previous snapshot and every completed trial stay."""
    storage = Storage(pg_url)
    expected = _reference(storage)
    with storage.engine.begin() as conn:
        conn.execute(text(_PAUSE_SNAPSHOT_WRITES))
    job = api.submit(storage, _spec())
    proc = _driver(pg_url, job)
    _wait_for_progress(storage, job, proc, 30)
    with storage.engine.begin() as conn:
        conn.execute(text("INSERT INTO fault_pause VALUES (true)"))
    backend = _backend_writing_a_snapshot(storage.engine)
    before = storage.jobs.get(job)
    seen = _completed(storage, job)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with storage.engine.begin() as conn:
        conn.execute(text("DELETE FROM fault_pause"))
        # the server notices a dead client only when it next talks to it: end the session
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    after = storage.jobs.get(job)
    assert (after.snapshot_told, after.snapshot_asked) == \
        (before.snapshot_told, before.snapshot_asked)
    assert after.strategy_state == before.strategy_state
    assert _completed(storage, job) == seen, "the interrupted step changed stored trials"
    _resume_to_the_end(pg_url, storage, job, seen, expected)


def test_second_driver_is_refused_while_the_lease_is_live(sqlite_url):
    storage = Storage(sqlite_url)
    # 20 s of work: the refused `nas resume` subprocess must start (seconds on a loaded
    # 2-core machine) and the driver be interrupted before the job is done
    job = api.submit(storage, nb201_spec(budget={"trials": 200},
                                         evaluator_args={"delay_s": 0.1},
                                         parallelism=1, batch_size=1))
    proc = _driver(sqlite_url, job)
    try:
        _wait_for_progress(storage, job, proc, 3)
        with pytest.raises(LeaseHeldError, match="being run by driver"):
            api.run(storage, job)
        result = subprocess.run([sys.executable, "-m", "nas", "--db", sqlite_url, "resume",
                                 str(job)], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "being run by driver" in lines[0]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert storage.jobs.get(job).status == "paused"
    assert api.run(storage, job) == "completed"
    assert storage.trials.counts(job) == {"completed": 200}
