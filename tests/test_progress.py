"""Progress of a job's phases (`job_progress`): stored by the driver, read by any process.

Storage over SQLite and PostgreSQL, the migration from 0008, and real jobs: trials, a proxy
pool, a weight-sharing supernet, a detached job followed through `nas status --json`.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text, update

from nas.errors import NasError
from nas.storage import Storage, current_revision, job_progress, set_progress
from nas.storage.schema import job_progress as job_progress_table


@pytest.fixture
def storage(db_url):
    store = Storage(db_url)
    yield store
    store.close()


def _job(storage: Storage) -> int:
    return storage.create_job({"space": "nb201"}, "progress", seed=0)


# ---- storage --------------------------------------------------------------------------------
def test_set_progress_upserts_and_job_progress_reads_phases_in_job_order(storage):
    job = _job(storage)
    set_progress(storage, job, "trials", 0, 100, {"best": None}, restart=True)
    set_progress(storage, job, "pool", 5, 10, restart=True)
    set_progress(storage, job, "trials", 40, 100, {"best": 0.93, "metric": "acc"})
    phases = job_progress(storage, job)
    assert [p.phase for p in phases] == ["pool", "trials"]
    trials = phases[1]
    assert (trials.done, trials.total, trials.fraction) == (40, 100, 0.4)
    assert trials.detail == {"best": 0.93, "metric": "acc"}
    assert trials.updated_at >= trials.started_at
    assert job_progress(storage, _job(storage)) == []


def test_eta_comes_from_the_rate_of_the_current_session(storage):
    job = _job(storage)
    set_progress(storage, job, "trials", 20, 100, restart=True)  # resumed at 20
    set_progress(storage, job, "trials", 40, 100)
    start = job_progress(storage, job)[0].started_at
    with storage.engine.begin() as conn:  # 20 trials in 10 s: 60 left take 30 s
        conn.execute(update(job_progress_table).values(updated_at=start + timedelta(seconds=10)))
    assert job_progress(storage, job)[0].eta_s == pytest.approx(30.0)
    set_progress(storage, job, "trials", 20, 100, restart=True)  # a new session: no rate yet
    assert job_progress(storage, job)[0].eta_s is None
    set_progress(storage, job, "trials", 100, 100)
    done = job_progress(storage, job)[0]
    assert (done.eta_s, done.fraction) == (0.0, 1.0)


def test_open_ended_phase_has_no_fraction_nor_eta_and_detail_is_made_storable(storage):
    import numpy as np

    job = _job(storage)
    set_progress(storage, job, "trials", 7, None,
                 {"best": float("nan"), "loss": np.float32(1.5), "n": np.int64(3)}, restart=True)
    phase = job_progress(storage, job)[0]
    assert (phase.total, phase.fraction, phase.eta_s) == (None, None, None)
    assert phase.detail == {"best": None, "loss": 1.5, "n": 3}


@pytest.mark.parametrize("phase, done, total", [("", 1, 2), ("x" * 33, 1, 2), ("pool", -1, 2),
                                                ("pool", 1, -2)])
def test_bad_progress_is_refused(storage, phase, done, total):
    job = _job(storage)
    with pytest.raises(NasError, match="progress"):
        set_progress(storage, job, phase, done, total)
    assert job_progress(storage, job) == []


def test_progress_goes_with_its_job(storage):
    job = _job(storage)
    set_progress(storage, job, "trials", 1, 2, restart=True)
    with storage.engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job})
    assert job_progress(storage, job) == []


def test_migration_upgrades_a_database_made_at_0008(db_url):
    from sqlalchemy import inspect

    from nas.storage import make_engine, upgrade

    engine = make_engine(db_url)
    upgrade(engine, "0008")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (name, spec, status, seed, created_at, updated_at, "
                          "snapshot_told, snapshot_asked, elapsed_s, cancel_requested) "
                          "VALUES ('old', '{}', 'completed', 0, CURRENT_TIMESTAMP, "
                          "CURRENT_TIMESTAMP, 0, 0, 0, false)"))
    assert "job_progress" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert current_revision(engine) == "0009"
    assert "job_progress" in inspect(engine).get_table_names()
    engine.dispose()
    storage = Storage(db_url)
    try:
        job = storage.list_jobs()[0]["id"]
        assert job_progress(storage, job) == []
        set_progress(storage, job, "trials", 3, 3, restart=True)
        assert [(p.phase, p.fraction) for p in job_progress(storage, job)] == [("trials", 1.0)]
    finally:
        storage.close()
