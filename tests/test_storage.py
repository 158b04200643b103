"""Storage on a real SQLite file and a real PostgreSQL database: schema and migrations,
jobs, leases, the driver's transaction, constraints, and the read-side queries checked
against brute force over a real job."""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import Column, Integer, MetaData, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from nas import api
from nas.errors import LeaseHeldError, NasError
from nas.storage import (
    MeasurementRow,
    NewTrial,
    ScoredResult,
    Storage,
    best_trials,
    current_revision,
    get_trial,
    head_revision,
    new_owner,
    pareto_front,
    trials_with_device_value,
    unknown_measurement_count,
    utcnow,
)
from nas.storage.schema import (
    SOURCE_RANK,
    architectures,
    jobs,
    measurements,
    metadata,
    trials,
)
from search_spaces import NB201Space
from tests.conftest import nb201_spec

SPACE = NB201Space()
TABLES = {"jobs", "architectures", "trials", "measurements", "artifacts", "trial_weights",
          "trial_device_values", "servers", "database_info", "trial_reports", "job_progress",
          "alembic_version"}


@pytest.fixture
def storage(db_url):
    store = Storage(db_url)
    yield store
    store.close()


def _archs(n: int, seed: int = 0) -> list[dict]:
    """n distinct NB201 architectures."""
    import numpy as np

    rng = np.random.default_rng(seed)
    found: dict[str, dict] = {}
    while len(found) < n:
        arch = SPACE.sample(rng)
        found.setdefault(SPACE.key(arch), arch)
    return list(found.values())


def _new(number: int, arch: dict) -> NewTrial:
    return NewTrial(number, SPACE.key(arch), arch)


def _result(trial_id: int, architecture_id: int, score: float | None = 1.0,
            status: str = "completed", measured: list[dict] | None = None,
            feasible: bool | None = True) -> ScoredResult:
    now = time.time()
    return ScoredResult(
        trial_id, status, 1, "test-worker", now - 1.0, now,
        {"valid_acc": score} if status == "completed" else None, score,
        [score] if score is not None else None, feasible if status == "completed" else None,
        None if status == "completed" else "boom", architecture_id, 1000, 2000,
        measured or [])


def _m(device: str, value: float, source: str, metric: str = "latency_ms") -> dict:
    return {"device": device, "metric": metric, "value": value, "source": source}


def _job_with_lease(storage: Storage, name: str = "j") -> tuple[int, str]:
    job = storage.jobs.create({"name": name}, name, seed=7)
    owner = new_owner()
    storage.jobs.acquire_lease(job, owner, ttl_s=60)
    return job, owner


def _count(storage: Storage, table) -> int:  # noqa: ANN001
    with storage.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def _set_lease(storage: Storage, job: int, owner: str | None, expires_in_s: float) -> None:
    with storage.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job).values(
            lease_owner=owner, lease_expires_at=utcnow() + timedelta(seconds=expires_in_s)))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- schema and migrations ------------------------------------------------------------------
def test_schema_is_created_on_first_open_at_alembic_head(db_url):
    from sqlalchemy import inspect

    storage = Storage(db_url)
    try:
        assert set(inspect(storage.engine).get_table_names()) == TABLES
        assert current_revision(storage.engine) == head_revision() == "0009"
        assert storage.jobs.all() == []
    finally:
        storage.close()
    again = Storage(db_url)  # a second open finds the schema and leaves it alone
    try:
        assert current_revision(again.engine) == head_revision()
    finally:
        again.close()


def _schema_differences(storage: Storage, target: MetaData) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with storage.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True})
        diffs = compare_metadata(context, target)
    # Alembic cannot compare an index with a sort order (`score DESC`): it reports it as
    # removed and added again. Such a pair is dropped here; the test below checks it.
    descending = {"ix_trial_device_values_score"}
    return [d for d in diffs if not (isinstance(d, tuple) and d[0] in ("add_index",
                                                                        "remove_index")
                                     and d[1].name in descending)]


def test_descending_score_index_exists_as_declared(storage):
    from sqlalchemy import inspect

    indexes = {i["name"]: i for i in inspect(storage.engine).get_indexes("trial_device_values")}
    index = indexes["ix_trial_device_values_score"]
    assert [c or e for c, e in zip(index["column_names"], index.get("expressions",
                                                                     index["column_names"]),
                                   strict=True)][:3] == ["job_id", "device", "metric"]
    with storage.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            ddl = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = "
                                    "'ix_trial_device_values_score'")).scalar_one()
        else:
            ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = "
                                    "'ix_trial_device_values_score'")).scalar_one()
    assert "score DESC, number, value, feasible, trial_id" in ddl, ddl


def test_migrations_and_schema_module_agree(storage):
    """Alembic's autogenerate finds nothing to change between the migrated database and
    `nas.storage.schema.metadata`: the migration creates exactly the declared schema."""
    assert _schema_differences(storage, metadata) == []


def test_schema_comparison_is_not_vacuous(storage):
    changed = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["jobs"].append_column(Column("priority", Integer))
    changed.tables["trials"].indexes.clear()
    diffs = _schema_differences(storage, changed)
    kinds = {d[0] if isinstance(d, tuple) else d[0][0] for d in diffs}
    assert "add_column" in kinds and "remove_index" in kinds


def test_unknown_revision_is_refused_with_upgrade_advice(db_url):
    Storage(db_url).close()
    storage = Storage(db_url)
    with storage.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    storage.close()
    with pytest.raises(NasError, match=r"schema revision 9999 is unknown to this version of "
                                        r"nas \(newest 0009\).*run `nas db upgrade`"):
        Storage(db_url)
    # upgrading cannot help until nas itself is newer: a clear error, not a traceback
    from nas.storage import make_engine, upgrade

    engine = make_engine(db_url)
    try:
        with pytest.raises(NasError, match="cannot upgrade the schema: .*'9999'"):
            upgrade(engine)
        assert current_revision(engine) == "9999"
    finally:
        engine.dispose()


def test_older_known_revision_asks_for_upgrade_and_upgrade_keeps_the_data(db_url):
    """A database made by the previous schema (0001, before trained weights were stored):
    refused with advice; `upgrade` (what `nas db upgrade` runs) brings it to head in place."""
    from sqlalchemy import inspect

    from nas.storage import make_engine, upgrade

    engine = make_engine(db_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (name, spec, status, seed, created_at, updated_at, "
                          "snapshot_told, snapshot_asked, elapsed_s, cancel_requested) "
                          "VALUES ('old', '{}', 'completed', 0, CURRENT_TIMESTAMP, "
                          "CURRENT_TIMESTAMP, 0, 0, 0, false)"))
    assert "trial_weights" not in inspect(engine).get_table_names()
    with pytest.raises(NasError, match=r"schema revision 0001 differs from this version's "
                                        r"0009; run `nas db upgrade`"):
        Storage(db_url)
    upgrade(engine)
    assert current_revision(engine) == "0009"
    assert "trial_weights" in inspect(engine).get_table_names()
    assert "model_version" in {c["name"] for c in inspect(engine).get_columns("measurements")}
    assert "code" in {c["name"] for c in inspect(engine).get_columns("jobs")}
    engine.dispose()
    storage = Storage(db_url)
    assert [j.name for j in storage.jobs.all()] == ["old"]


def test_upgrade_fills_the_device_values_of_existing_trials(db_url):
    """0003 -> 0004 backfills each scored trial's preferred device value."""
    from nas.storage import make_engine, upgrade

    engine = make_engine(db_url)
    upgrade(engine, "0003")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (id, name, spec, status, seed, created_at, "
                          "updated_at, snapshot_told, snapshot_asked, elapsed_s, "
                          "cancel_requested) VALUES (1, 'old', '{}', 'completed', 0, "
                          "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0, 0, 0, false)"))
        for aid in (1, 2, 3):
            conn.execute(text("INSERT INTO architectures (id, space, key, arch) VALUES "
                              f"({aid}, 'nb201', 'a{aid}', '{{}}')"))
        for number, (aid, status, score) in enumerate(
                [(1, "completed", 0.5), (2, "completed", 0.7), (3, "failed", None)], 1):
            conn.execute(text("INSERT INTO trials (job_id, number, architecture_id, status, "
                              "attempt, score) VALUES (1, :n, :a, :s, 0, :sc)"),
                         {"n": number, "a": aid, "s": status, "sc": score})
        for aid, source, rank, value in [(1, "benchmark", 2, 9.0), (1, "measured", 0, 7.0),
                                         (2, "predicted", 3, 5.0), (3, "benchmark", 2, 1.0)]:
            conn.execute(text("INSERT INTO measurements (architecture_id, device, metric, "
                              "value, source, source_rank, created_at) VALUES (:a, 'pixel3', "
                              "'latency_ms', :v, :s, :r, CURRENT_TIMESTAMP)"),
                         {"a": aid, "v": value, "s": source, "r": rank})
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT trial_id, value, source, score FROM "
                                 "trial_device_values ORDER BY trial_id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, 7.0, "measured", 0.5), (2, 5.0, "predicted", 0.7)]
    storage = Storage(db_url)
    best = best_trials(storage, 1, top=5, device="pixel3", max_value=6.0)
    assert [(r["number"], r["device_value"]) for r in best] == [(2, 5.0)]
    storage.close()


def test_foreign_tables_without_version_are_refused(db_url):
    Storage(db_url).close()
    storage = Storage(db_url)
    with storage.engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    storage.close()
    with pytest.raises(NasError, match="has nas tables but no schema version"):
        Storage(db_url)


def test_unreachable_database_is_a_clear_error():
    with pytest.raises(NasError, match="cannot connect"):
        Storage("postgresql://nobody@127.0.0.1:1/none")


@pytest.mark.parametrize("url, message", [
    ("nas.db", "is not a database URL"),
    ("mysql://u@h/db", "unsupported database 'mysql'"),
    ("sqlite:////no/such/folder/nas.db", "does not exist"),
])
def test_bad_urls_are_clear_errors(url, message):
    with pytest.raises(NasError, match=message):
        Storage(url)


def test_sqlite_file_uses_wal_and_busy_timeout(sqlite_url):
    storage = Storage(sqlite_url)
    try:
        with storage.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        # every connection of the pool gets them, not just the first
        connections = [storage.engine.raw_connection() for _ in range(3)]
        try:
            for conn in connections:
                cursor = conn.cursor()
                assert cursor.execute("PRAGMA busy_timeout").fetchone()[0] == 60000
                assert cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                cursor.close()
        finally:
            for conn in connections:
                conn.close()
    finally:
        storage.close()


def test_in_memory_sqlite_works():
    storage = Storage("sqlite://")
    job = storage.jobs.create({"a": 1}, "mem", seed=1)
    assert storage.jobs.get(job).spec == {"a": 1}


# ---- jobs -----------------------------------------------------------------------------------
def test_create_get_and_list_jobs(storage):
    spec = nb201_spec()
    a = storage.jobs.create(spec, "first", seed=3)
    b = storage.jobs.create({"nested": {"x": [1, 2.5, None, "y"]}}, "second", seed=2**40)
    assert b > a
    job = storage.jobs.get(a)
    assert job.spec == spec and job.name == "first" and job.seed == 3
    assert job.status == "pending" and job.lease_owner is None
    assert job.strategy_state is None and job.snapshot_told == 0
    assert job.cancel_requested is False and job.elapsed_s == 0.0
    assert job.created_at.tzinfo is not None
    assert abs((utcnow() - job.created_at).total_seconds()) < 60
    assert storage.jobs.get(b).seed == 2**40
    listed = storage.jobs.all()
    assert [j.id for j in listed] == [a, b]
    assert [j.name for j in listed] == ["first", "second"]
    assert listed[0].trials == {} and listed[0].created_at.tzinfo is not None
    with pytest.raises(NasError, match="no job 999"):
        storage.jobs.get(999)


def test_trial_counts_and_list_jobs_count_by_status(storage):
    job, owner = _job_with_lease(storage)
    other, _ = _job_with_lease(storage, "other")
    archs = _archs(5)
    created = storage.trials.commit_step(job, owner, "nb201", [_new(i + 1, a) for i, a in
                                                               enumerate(archs)])
    results = [_result(*created[1], 90.0), _result(*created[2], None, status="failed")]
    storage.trials.commit_step(job, owner, "nb201", results=results,
                               dispatched=[(created[3][0], 1)])
    assert storage.trials.counts(job) == {"completed": 1, "failed": 1, "running": 1,
                                          "queued": 2}
    assert storage.trials.counts(other) == {}
    listed = {j.id: j.trials for j in storage.jobs.all()}
    assert listed == {job: {"completed": 1, "failed": 1, "running": 1, "queued": 2}, other: {}}


# ---- leases ---------------------------------------------------------------------------------
def test_lease_is_exclusive_and_names_its_holder(storage):
    job = storage.jobs.create({}, "j", seed=0)
    first, second = new_owner(), new_owner()
    storage.jobs.acquire_lease(job, first, ttl_s=30)
    row = storage.jobs.get(job)
    assert row.lease_owner == first
    assert 20 < (row.lease_expires_at - utcnow()).total_seconds() <= 30
    held = rf"job {job} is being run by driver {first} \(lease live for another \d+s\)"
    with pytest.raises(LeaseHeldError, match=held):
        storage.jobs.acquire_lease(job, second, ttl_s=30)
    storage.jobs.acquire_lease(job, first, ttl_s=30)  # the holder may renew
    assert storage.jobs.get(job).lease_owner == first


def test_expired_lease_can_be_taken_over(storage):
    job = storage.jobs.create({}, "j", seed=0)
    first, second = new_owner(), new_owner()
    storage.jobs.acquire_lease(job, first, ttl_s=30)
    _set_lease(storage, job, first, expires_in_s=-1)
    storage.jobs.acquire_lease(job, second, ttl_s=30)
    assert storage.jobs.get(job).lease_owner == second
    with pytest.raises(LeaseHeldError, match=second):
        storage.jobs.acquire_lease(job, first, ttl_s=30)


def test_lease_of_a_dead_process_on_this_host_is_taken_at_once(storage):
    job = storage.jobs.create({}, "j", seed=0)
    dead = f"{socket.gethostname()}:{_dead_pid()}:deadbeef"
    _set_lease(storage, job, dead, expires_in_s=3600)
    mine = new_owner()
    storage.jobs.acquire_lease(job, mine, ttl_s=30)
    assert storage.jobs.get(job).lease_owner == mine


@pytest.mark.parametrize("holder", [
    f"{socket.gethostname()}:{os.getpid()}:0ther0wn",  # alive: this very process
    "some-other-host:1:cafebabe",  # another host: its pids cannot be checked from here
    "not-an-owner-string",
])
def test_live_or_unverifiable_lease_is_respected(storage, holder):
    job = storage.jobs.create({}, "j", seed=0)
    _set_lease(storage, job, holder, expires_in_s=3600)
    with pytest.raises(LeaseHeldError, match=f"driver {holder} "):
        storage.jobs.acquire_lease(job, new_owner(), ttl_s=30)
    assert storage.jobs.get(job).lease_owner == holder


def test_heartbeat_extends_and_reports_a_lost_lease(storage):
    job = storage.jobs.create({}, "j", seed=0)
    first, second = new_owner(), new_owner()
    storage.jobs.acquire_lease(job, first, ttl_s=5)
    before = storage.jobs.get(job).lease_expires_at
    assert storage.jobs.heartbeat(job, first, ttl_s=300, elapsed_s=12.5) is True
    row = storage.jobs.get(job)
    assert row.lease_expires_at > before + timedelta(seconds=200)
    assert row.elapsed_s == 12.5
    _set_lease(storage, job, first, expires_in_s=-1)
    storage.jobs.acquire_lease(job, second, ttl_s=30)
    taken = storage.jobs.get(job)
    assert storage.jobs.heartbeat(job, first, ttl_s=300, elapsed_s=99.0) is False
    row = storage.jobs.get(job)
    assert row.lease_owner == second and row.elapsed_s == 12.5
    assert row.lease_expires_at == taken.lease_expires_at


def test_a_driver_that_lost_its_lease_cannot_set_the_status(storage):
    job = storage.jobs.create({}, "j", seed=0)
    first, second = new_owner(), new_owner()
    storage.jobs.acquire_lease(job, first, ttl_s=30)
    _set_lease(storage, job, first, expires_in_s=-1)
    storage.jobs.acquire_lease(job, second, ttl_s=30)
    storage.jobs.start_running(job, first)
    assert storage.jobs.get(job).status == "pending"
    storage.jobs.set_status(job, "failed", owner=first, error="late")
    row = storage.jobs.get(job)
    assert row.status == "pending" and row.lease_owner == second
    storage.jobs.set_status(job, "completed", owner=second)
    row = storage.jobs.get(job)
    assert row.status == "completed" and row.lease_owner is None


def test_concurrent_acquire_has_exactly_one_winner(db_url):
    Storage(db_url).close()
    stores = [Storage(db_url) for _ in range(6)]
    try:
        job = stores[0].jobs.create({}, "race", seed=0)
        barrier = threading.Barrier(len(stores))
        outcomes: dict[str, str] = {}

        def contend(store: Storage) -> None:
            owner = new_owner()
            barrier.wait()
            try:
                store.jobs.acquire_lease(job, owner, ttl_s=30)
                outcomes[owner] = "won"
            except LeaseHeldError:
                outcomes[owner] = "refused"
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                outcomes[owner] = f"{type(exc).__name__}: {exc}"

        threads = [threading.Thread(target=contend, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(outcomes.values()) == ["refused"] * 5 + ["won"], outcomes
        winner = next(o for o, r in outcomes.items() if r == "won")
        assert stores[0].jobs.get(job).lease_owner == winner
    finally:
        for store in stores:
            store.close()


# ---- the driver's transaction ---------------------------------------------------------------
def test_commit_step_writes_trials_results_and_measurements(storage):
    job, owner = _job_with_lease(storage)
    archs = _archs(3)
    created = storage.trials.commit_step(job, owner, "nb201", [_new(i + 1, a) for i, a in
                                                               enumerate(archs)],
                                        snapshot=({"rng": 1}, 0, 3), elapsed_s=1.5)
    assert sorted(created) == [1, 2, 3]
    rows = storage.trials.load(job)
    assert [(r.number, r.status, r.key, r.arch, r.id, r.architecture_id)
            for r in rows] == [(n, "queued", SPACE.key(a), a, *created[n])
                               for n, a in zip((1, 2, 3), archs, strict=True)]
    storage.trials.commit_step(job, owner, "nb201", dispatched=[(created[1][0], 1),
                                                                (created[2][0], 1)])
    assert storage.trials.counts(job) == {"running": 2, "queued": 1}
    storage.trials.commit_step(job, owner, "nb201", results=[
        _result(*created[1], 91.0, measured=[_m("pixel3", 10.0, "benchmark"),
                                             _m("pixel3", 3.0, "benchmark", "energy_mj")]),
        _result(*created[2], None, status="failed")])
    rows = {r.number: r for r in storage.trials.load(job)}
    assert rows[1].status == "completed" and rows[1].score == 91.0
    assert rows[1].metrics == {"valid_acc": 91.0} and rows[1].objectives == [91.0]
    assert rows[1].feasible is True
    assert rows[2].status == "failed" and rows[2].score is None
    assert rows[3].status == "queued"
    trial = get_trial(storage, job, 1)
    assert trial["params"] == 1000 and trial["flops"] == 2000 and trial["worker"] == "test-worker"
    with storage.engine.connect() as conn:
        stored = conn.execute(select(measurements.c.metric, measurements.c.value,
                                     measurements.c.source_rank)
                              .order_by(measurements.c.metric)).all()
    assert [tuple(r) for r in stored] == [("energy_mj", 3.0, SOURCE_RANK["benchmark"]),
                                          ("latency_ms", 10.0, SOURCE_RANK["benchmark"])]
    row = storage.jobs.get(job)
    assert row.strategy_state == {"rng": 1} and row.snapshot_asked == 3
    with pytest.raises(NasError, match="has no trial 9"):
        get_trial(storage, job, 9)


def test_commit_step_without_the_lease_writes_nothing(storage):
    job, owner = _job_with_lease(storage)
    created = storage.trials.commit_step(job, owner, "nb201", [_new(1, _archs(1)[0])],
                                         snapshot=({"v": 1}, 0, 1))
    intruder = new_owner()
    before = storage.jobs.get(job)
    counts = [_count(storage, t) for t in (architectures, trials, measurements)]
    with pytest.raises(LeaseHeldError, match="lost its lease"):
        storage.trials.commit_step(job, intruder, "nb201", [_new(2, _archs(2, seed=5)[1])],
                                   results=[_result(*created[1], 50.0,
                                                    measured=[_m("pixel3", 1.0, "measured")])],
                                   snapshot=({"v": 2}, 1, 2), elapsed_s=9.0)
    assert [_count(storage, t) for t in (architectures, trials, measurements)] == counts
    assert storage.trials.load(job)[0].status == "queued"
    after = storage.jobs.get(job)
    assert after.strategy_state == {"v": 1} and after.updated_at == before.updated_at


def test_commit_step_is_all_or_nothing(storage):
    """A step that fails half-way (a duplicate trial number) leaves no trace: no new
    architecture, no result, no snapshot."""
    job, owner = _job_with_lease(storage)
    first, second, third = _archs(3)
    created = storage.trials.commit_step(job, owner, "nb201", [_new(1, first)],
                                         snapshot=({"v": 1}, 0, 1))
    counts = [_count(storage, t) for t in (architectures, trials, measurements)]
    with pytest.raises(IntegrityError):
        storage.trials.commit_step(job, owner, "nb201", [_new(2, second), _new(1, third)],
                                   results=[_result(*created[1], 50.0,
                                                    measured=[_m("pixel3", 1.0, "measured")])],
                                   snapshot=({"v": 2}, 1, 2))
    assert [_count(storage, t) for t in (architectures, trials, measurements)] == counts
    assert storage.trials.load(job)[0].status == "queued"
    assert storage.jobs.get(job).strategy_state == {"v": 1}


def test_an_architecture_is_evaluated_once_per_job(storage):
    job, owner = _job_with_lease(storage)
    arch, other = _archs(2)
    created = storage.trials.commit_step(job, owner, "nb201", [_new(1, arch)])
    with pytest.raises(IntegrityError):
        storage.trials.commit_step(job, owner, "nb201", [_new(2, other), _new(3, arch)])
    assert [r.number for r in storage.trials.load(job)] == [1]
    with pytest.raises(IntegrityError, match="uq_trials_job_architecture|UNIQUE"):
        with storage.engine.begin() as conn:
            conn.execute(insert(trials).values(job_id=job, number=5, status="queued",
                                               attempt=0, architecture_id=created[1][1]))
    # another job may evaluate it: the architecture row (and its measurements) is shared
    second, owner2 = _job_with_lease(storage, "second")
    again = storage.trials.commit_step(second, owner2, "nb201", [_new(1, arch)])
    assert again[1][1] == created[1][1]
    assert _count(storage, architectures) == 1


def test_architectures_are_unique_per_space(storage):
    job, owner = _job_with_lease(storage)
    arch = _archs(1)[0]
    storage.trials.commit_step(job, owner, "nb201", [_new(1, arch)])
    other, owner2 = _job_with_lease(storage, "other-space")
    storage.trials.commit_step(other, owner2, "some-other-space", [_new(1, arch)])
    assert _count(storage, architectures) == 2
    with pytest.raises(IntegrityError):
        with storage.engine.begin() as conn:
            conn.execute(insert(architectures).values(space="nb201", key=SPACE.key(arch),
                                                      arch=arch))


# ---- measurements and the read side ---------------------------------------------------------
def test_measured_beats_imported_beats_benchmark_beats_predicted(storage):
    job, owner = _job_with_lease(storage)
    a1, a2, a3, a4 = _archs(4)
    created = storage.trials.commit_step(job, owner, "nb201",
                                         [_new(n, a) for n, a in enumerate((a1, a2, a3, a4), 1)])
    storage.trials.commit_step(job, owner, "nb201", results=[
        _result(*created[1], 94.0, measured=[_m("pixel3", 20.0, "benchmark"),
                                             _m("pixel3", 15.0, "measured")]),
        _result(*created[2], 93.0, measured=[_m("pixel3", 12.0, "benchmark")]),
        _result(*created[3], 92.0, measured=[_m("pixel3", 5.0, "predicted"),
                                             _m("pixel3", 30.0, "imported"),
                                             _m("pixel3", 40.0, "benchmark")]),
        _result(*created[4], 91.0, measured=[_m("fpga", 1.0, "measured")]),
    ])
    rows = best_trials(storage, job, top=10, device="pixel3")
    assert [(r["number"], r["device_value"], r["device_source"]) for r in rows] == [
        (1, 15.0, "measured"), (2, 12.0, "benchmark"), (3, 30.0, "imported"), (4, None, None)]
    # the budget filters on the preferred value: 1 passes (measured 15, though the benchmark
    # says 20), 3 does not (imported 30, though predicted says 5), 4 is unknown
    under = best_trials(storage, job, top=10, device="pixel3", max_value=16.0)
    assert [r["number"] for r in under] == [1, 2]
    assert unknown_measurement_count(storage, job, "pixel3") == 1
    assert unknown_measurement_count(storage, job, "fpga") == 3
    assert {r["number"]: r["device_value"] for r in
            trials_with_device_value(storage, job, "pixel3")} == {1: 15.0, 2: 12.0, 3: 30.0}
    # measurements belong to the architecture: another job sees them
    other, owner2 = _job_with_lease(storage, "other")
    made = storage.trials.commit_step(other, owner2, "nb201", [_new(1, a1)])
    storage.trials.commit_step(other, owner2, "nb201", results=[_result(*made[1], 50.0)])
    assert best_trials(storage, other, device="pixel3")[0]["device_value"] == 15.0


def test_best_trials_rejects_top_zero(storage):
    with pytest.raises(NasError, match="--top must be at least 1"):
        best_trials(storage, 1, top=0)


DEVICE_SPEC = {"constraints": [{"metric": "latency_ms", "device": "pixel3", "max": 16.0}],
               "budget": {"trials": 80}}


@pytest.fixture
def real_job(storage):
    """A real search (evolution on the NB201 table with HW-NAS-Bench latencies), plus
    `measured` latencies for some of its architectures and `predicted` ones for others."""
    job = api.submit(storage, nb201_spec(**DEVICE_SPEC))
    assert api.run(storage, job) == "completed"
    rows = storage.trials.load(job)
    rng = random.Random(0)
    extra = []
    for row in rows:
        roll = rng.random()
        source = "measured" if roll < 0.3 else "predicted" if roll < 0.5 else None
        if source:
            extra.append(MeasurementRow(row.key, row.arch, "pixel3", "latency_ms",
                                        rng.uniform(5, 30), source))
    storage.measurements.put("nb201", extra)
    return job


def _brute_force_rows(storage: Storage, job: int, device: str | None,
                      metric: str = "latency_ms") -> list[dict]:
    """Completed, scored trials with their preferred measurement, computed in Python."""
    with storage.engine.connect() as conn:
        trial_rows = conn.execute(select(trials).where(trials.c.job_id == job)).mappings().all()
        found = conn.execute(select(measurements)).mappings().all()
    preferred: dict[int, tuple[int, float, str]] = {}
    for m in found:
        if m["device"] == device and m["metric"] == metric:
            current = preferred.get(m["architecture_id"])
            if current is None or m["source_rank"] < current[0]:
                preferred[m["architecture_id"]] = (m["source_rank"], m["value"], m["source"])
    rows = []
    for t in trial_rows:
        if t["status"] != "completed" or t["score"] is None:
            continue
        rank_value_source = preferred.get(t["architecture_id"])
        rows.append({"number": t["number"], "score": t["score"], "feasible": t["feasible"],
                     "device_value": rank_value_source[1] if rank_value_source else None,
                     "device_source": rank_value_source[2] if rank_value_source else None})
    return rows


BEST_CASES = [  # device, max_value, top, feasible_only
    (None, None, 5, False), (None, None, 1000, False), (None, None, 1000, True),
    ("pixel3", None, 1000, False), ("pixel3", 16.0, 1000, False), ("pixel3", 16.0, 7, True),
    ("pixel3", 8.0, 1000, False), ("edgegpu", 5.0, 1000, False), ("fpga", None, 10, True),
    ("raspi4", None, 3, False), ("no-such-device", 100.0, 10, False),
]


@pytest.mark.integration
def test_best_trials_matches_brute_force(storage, real_job):
    everything = _brute_force_rows(storage, real_job, None)
    assert len(everything) > 50
    for device, max_value, top, feasible_only in BEST_CASES:
        expected = _brute_force_rows(storage, real_job, device)
        if max_value is not None:
            expected = [r for r in expected
                        if r["device_value"] is not None and r["device_value"] <= max_value]
        if feasible_only:
            expected = [r for r in expected if r["feasible"] is True]
        expected.sort(key=lambda r: (-r["score"], r["number"]))
        got = best_trials(storage, real_job, top=top, device=device, max_value=max_value,
                          feasible_only=feasible_only)
        fields = ["number", "score"] + (["device_value", "device_source"] if device else [])
        case = (device, max_value, top, feasible_only)
        assert [[r[f] for f in fields] for r in got] == \
            [[r[f] for f in fields] for r in expected[:top]], case
        if device == "pixel3" and max_value is None:
            sources = {r["device_source"] for r in got}
            assert {"measured", "benchmark", "predicted", None} <= sources  # every path
        if max_value is not None and device == "pixel3":
            assert 0 < len(got) < len(everything), case  # the budget does filter


def test_unknown_measurements_and_device_rows_match_brute_force(storage, real_job):
    for device in ("pixel3", "fpga", "no-such-device"):
        rows = _brute_force_rows(storage, real_job, device)
        completed = [t for t in storage.trials.load(real_job) if t.status == "completed"]
        known = {r["number"] for r in rows if r["device_value"] is not None}
        assert unknown_measurement_count(storage, real_job, device) == \
            len([t for t in completed if t.number not in known])
        got = trials_with_device_value(storage, real_job, device)
        assert sorted((r["number"], r["device_value"], r["device_source"]) for r in got) == \
            sorted((r["number"], r["device_value"], r["device_source"]) for r in rows
                   if r["device_value"] is not None)


def _brute_force_front(rows: list[dict]) -> list[dict]:
    """Rows no other row dominates (score >= and value <=, one strictly), one row per
    (value, score) point (the lowest trial number), ordered by value."""
    def dominated(r: dict) -> bool:
        return any(s["score"] >= r["score"] and s["device_value"] <= r["device_value"] and
                   (s["score"] > r["score"] or s["device_value"] < r["device_value"])
                   for s in rows)

    points: dict[tuple[float, float], dict] = {}
    for r in sorted(rows, key=lambda r: r["number"]):
        if not dominated(r):
            points.setdefault((r["device_value"], r["score"]), r)
    return sorted(points.values(), key=lambda r: r["device_value"])


@pytest.mark.integration
def test_pareto_front_of_a_real_job_matches_brute_force(storage, real_job):
    for device in ("pixel3", "edgegpu", "fpga"):
        rows = trials_with_device_value(storage, real_job, device)
        assert len(rows) > 10
        front = pareto_front(rows)
        assert [r["number"] for r in front] == [r["number"] for r in _brute_force_front(rows)]
        values = [r["device_value"] for r in front]
        scores = [r["score"] for r in front]
        assert values == sorted(values) and scores == sorted(scores)
        assert len(set(values)) == len(values)


def test_pareto_front_with_ties_matches_brute_force():
    rng = random.Random(1)
    for _ in range(300):
        n = rng.randint(0, 12)
        rows = [{"number": i, "score": float(rng.randint(0, 4)),
                 "device_value": float(rng.randint(0, 4))} for i in range(1, n + 1)]
        rng.shuffle(rows)
        expected = [r["number"] for r in _brute_force_front(rows)]
        assert [r["number"] for r in pareto_front(rows)] == expected, rows


# ---- cancel ---------------------------------------------------------------------------------
def test_cancel_without_a_live_driver_is_immediate(storage):
    job = storage.jobs.create({}, "j", seed=0)
    assert storage.jobs.request_cancel(job) == "cancelled"
    row = storage.jobs.get(job)
    assert row.status == "cancelled" and row.cancel_requested is True
    with pytest.raises(NasError, match="already cancelled"):
        storage.jobs.request_cancel(job)


def test_cancel_of_a_job_whose_lease_expired_is_immediate(storage):
    job = storage.jobs.create({}, "j", seed=0)
    owner = new_owner()
    storage.jobs.acquire_lease(job, owner, ttl_s=30)
    storage.jobs.start_running(job, owner)
    _set_lease(storage, job, owner, expires_in_s=-1)
    assert storage.jobs.request_cancel(job) == "cancelled"
    row = storage.jobs.get(job)
    assert row.status == "cancelled" and row.lease_owner is None


def test_cancel_of_a_job_whose_driver_died_is_immediate(storage):
    job = storage.jobs.create({}, "j", seed=0)
    _set_lease(storage, job, f"{socket.gethostname()}:{_dead_pid()}:deadbeef", 3600)
    with storage.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job).values(status="running"))
    assert storage.jobs.request_cancel(job) == "cancelled"
    assert storage.jobs.get(job).status == "cancelled"


def test_cancel_of_a_running_driver_is_left_to_it(storage):
    job, owner = _job_with_lease(storage)
    storage.jobs.start_running(job, owner)
    assert storage.jobs.cancel_requested(job) is False
    assert storage.jobs.request_cancel(job) == "cancelling"
    row = storage.jobs.get(job)
    assert row.status == "running" and row.lease_owner == owner
    assert storage.jobs.cancel_requested(job) is True


def test_completed_job_cannot_be_cancelled(storage):
    job, owner = _job_with_lease(storage)
    storage.jobs.set_status(job, "completed", owner=owner)
    with pytest.raises(NasError, match="already completed"):
        storage.jobs.request_cancel(job)


def test_requeue_unfinished_and_job_deletion_cascade(storage):
    job, owner = _job_with_lease(storage)
    created = storage.trials.commit_step(job, owner, "nb201", [_new(n, a) for n, a in
                                                               enumerate(_archs(3), 1)])
    storage.trials.commit_step(job, owner, "nb201", dispatched=[(created[1][0], 1),
                                                                (created[2][0], 1)],
                               results=[_result(*created[2], 80.0)])
    storage.trials.requeue_unfinished(job)
    assert storage.trials.counts(job) == {"queued": 2, "completed": 1}
    storage.jobs.add_artifact(job, "report", "/tmp/report.html")
    with storage.engine.begin() as conn:
        conn.execute(delete(jobs).where(jobs.c.id == job))
    assert _count(storage, trials) == 0
    assert _count(storage, architectures) == 3  # shared rows stay


def test_owner_strings_are_unique_and_parse(storage):
    owners = {new_owner() for _ in range(50)}
    assert len(owners) == 50
    for owner in itertools.islice(owners, 3):
        host, pid, token = owner.split(":")
        assert host == socket.gethostname() and int(pid) == os.getpid() and len(token) == 8


def test_sqlite_readers_do_not_block_the_writer(sqlite_url):
    """WAL lets a writer commit while a read transaction is open (a `nas status` during a
    run); a read must not take the write lock."""
    storage = Storage(sqlite_url)
    try:
        job = storage.jobs.create({}, "j", seed=0)
        done = threading.Event()

        def write() -> None:
            storage.jobs.heartbeat(job, "nobody", ttl_s=1, elapsed_s=0)
            storage.jobs.create({}, "k", seed=1)
            done.set()

        with storage.read() as reader, storage.read() as other:
            assert reader.execute(select(func.count()).select_from(jobs)).scalar_one() == 1
            assert other.execute(select(func.count()).select_from(jobs)).scalar_one() == 1
            writer = threading.Thread(target=write)
            writer.start()
            assert done.wait(10), "the writer waited for a reader's transaction"
            # the reader keeps its snapshot until its transaction ends
            assert reader.execute(select(func.count()).select_from(jobs)).scalar_one() == 1
        writer.join()
        assert len(storage.jobs.all()) == 2
    finally:
        storage.close()


def test_lease_released_during_acquire_is_taken(pg_url):
    """PostgreSQL: the holder may release its lease between acquire's refused UPDATE and its
    look-up of the holder (READ COMMITTED); the lease is then free and must be taken.
    (SQLite cannot interleave: the acquiring transaction holds the write lock.)"""
    from sqlalchemy import create_engine, event

    storage = Storage(pg_url)
    other = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    try:
        job = storage.jobs.create({}, "j", seed=0)
        holder = new_owner()
        storage.jobs.acquire_lease(job, holder, ttl_s=60)
        fired = []

        def release_in_between(conn, cursor, statement, *args):  # noqa: ANN001
            if not fired and statement.lstrip().startswith("SELECT jobs.lease_owner"):
                fired.append(statement)
                with other.connect() as side:
                    side.execute(update(jobs).where(jobs.c.id == job).values(
                        lease_owner=None, lease_expires_at=None))

        event.listen(storage.engine, "before_cursor_execute", release_in_between)
        mine = new_owner()
        storage.jobs.acquire_lease(job, mine, ttl_s=60)
        assert fired
        assert storage.jobs.get(job).lease_owner == mine
    finally:
        other.dispose()
        storage.close()
