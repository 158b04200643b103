"""Progress of a job's phases (`job_progress`): stored by the driver, read by any process.

Storage over SQLite and PostgreSQL, the migration from 0008, and real jobs: trials, a proxy
pool, a weight-sharing supernet, a detached job followed through `nas status --json`.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
import yaml
from sqlalchemy import text, update

from nas import api
from nas.errors import NasError
from nas.progress import ProgressWriter, eta_text, phase_text
from nas.storage import Storage, current_revision, job_progress, set_progress
from nas.storage.schema import job_progress as job_progress_table
from tests.conftest import ROOT, nb201_spec, wait_until


@pytest.fixture
def storage(db_url):
    store = Storage(db_url)
    yield store
    store.close()


def _job(storage: Storage) -> int:
    return storage.jobs.create({"space": "nb201"}, "progress", seed=0)


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
        job = storage.jobs.all()[0].id
        assert job_progress(storage, job) == []
        set_progress(storage, job, "trials", 3, 3, restart=True)
        assert [(p.phase, p.fraction) for p in job_progress(storage, job)] == [("trials", 1.0)]
    finally:
        storage.close()


# ---- the writer -----------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_writer_throttles_each_phase_and_flushes_the_last_value(sqlite_url):
    storage = Storage(sqlite_url)
    job, clock, heard = _job(storage), _Clock(), []
    writer = ProgressWriter(storage, job, every_s=1.0, clock=clock,
                            listener=lambda *update: heard.append(update[:3]))
    writer.update("trials", 1, 10)  # a phase's first update is written at once
    for done in (2, 3, 4):
        clock.now += 0.3
        writer.update("trials", done, 10)
    assert job_progress(storage, job)[0].done == 1  # within the second: kept back
    clock.now += 0.2
    writer.update("trials", 5, 10)  # a second since the last write
    assert job_progress(storage, job)[0].done == 5
    writer.update("trials", 6, 10)
    writer.update("pool", 3, 3)  # another phase, and a complete one, are written at once
    assert [(p.phase, p.done) for p in job_progress(storage, job)] == [("pool", 3),
                                                                        ("trials", 5)]
    writer.flush()  # the session's end: the last value
    assert job_progress(storage, job)[1].done == 6
    assert heard == [("trials", n, 10) for n in range(1, 7)] + [("pool", 3, 3)]
    storage.close()


def test_writer_swallows_a_database_error(sqlite_url, caplog):
    storage = Storage(sqlite_url)
    writer = ProgressWriter(storage, 999, every_s=0.0)  # no job 999: a foreign key error
    with caplog.at_level(logging.WARNING, logger="nas.progress"):
        writer.update("trials", 1, 2)
        writer.update("trials", 2, 2)
    assert job_progress(storage, 999) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "progress of trials not stored" in warnings[0].getMessage()
    storage.close()


def test_phase_text_and_eta_text():
    assert phase_text("pool", 812, 1000, {}) == "scoring pool 812/1000"
    assert phase_text("supernet", 3, 10, {"train_loss": 1.2345, "val_acc": 0.612,
                                          "seconds": 3.0}) == \
        "supernet epoch 3/10 loss 1.23 acc 0.612"
    assert phase_text("trials", 40, 100, {"best": 0.93}) == "trials 40/100 best 0.93"
    assert phase_text("trials", 40, None, {"best": None}) == "trials 40"
    assert [eta_text(s) for s in (None, 4.4, 200, 7300)] == ["", "ETA 4s", "ETA 3m20s",
                                                             "ETA 2h01m"]


# ---- real jobs ------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_job_records_its_trials_phase_at_its_budget(db_url):
    storage = Storage(db_url)
    job = api.submit(storage, nb201_spec(budget={"trials": 12}))
    heard = []
    assert api.run(storage, job, on_phase=lambda *update: heard.append(update)) == "completed"
    (phase,) = job_progress(storage, job)
    assert (phase.phase, phase.done, phase.total, phase.fraction, phase.eta_s) == \
        ("trials", 12, 12, 1.0, 0.0)
    best = max(t.metrics["valid_acc"] for t in storage.trials.load(job))
    assert phase.detail == {"best": best, "metric": "valid_acc", "completed": 12}
    told = [done for name, done, _, _ in heard if name == "trials"]
    assert told == sorted(told) and told[-1] == 12
    storage.close()


PROXY_SPACE_ARGS = {"channels": 8, "cells_per_stage": 1, "input_channels": 1, "input_size": 8}


def _proxy_spec() -> dict:
    return nb201_spec(space_args=PROXY_SPACE_ARGS, strategy="proxy",
                      strategy_args={"pool": 10, "proxies": ["synflow", "params"],
                                     "dataset": "digits"},
                      budget={"trials": 3}, batch_size=1)


@pytest.mark.integration
def test_a_proxy_job_records_its_pool_being_scored(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    storage = Storage(db_url)
    job = api.submit(storage, _proxy_spec())
    heard = []
    assert api.run(storage, job, on_phase=lambda *update: heard.append(update)) == "completed"
    pool, trials = job_progress(storage, job)
    assert (pool.phase, pool.done, pool.total) == ("pool", 10, 10)
    assert (trials.phase, trials.done, trials.total) == ("trials", 3, 3)
    assert pool.started_at <= trials.started_at
    scored = [done for name, done, _, _ in heard if name == "pool"]
    assert scored == list(range(11))  # every cell, one after the other
    # a second job finds the scores stored: its pool is complete from the start
    again = api.submit(storage, _proxy_spec())
    heard.clear()
    assert api.run(storage, again, on_phase=lambda *update: heard.append(update)) == \
        "completed"
    assert [done for name, done, _, _ in heard if name == "pool"] == [10]
    storage.close()


SEARCH = {"epochs": 2, "dataset": {"kind": "digits", "limit": 300}, "batch_size": 32,
          "channels": 4}


def _darts_spec(**overrides) -> dict:
    return nb201_spec(**{"strategy": "darts", "strategy_args": SEARCH, "budget": {"trials": 2},
                         "batch_size": 1, **overrides})


def _supernet_records(storage: Storage, job: int, heard: list) -> None:
    phases = {p.phase: p for p in job_progress(storage, job)}
    supernet = phases["supernet"]
    assert (supernet.done, supernet.total, supernet.fraction) == (2, 2, 1.0)
    assert {"train_loss", "val_acc"} <= set(supernet.detail)
    assert (phases["trials"].done, phases["trials"].total) == (2, 2)
    epochs = [(done, total) for name, done, total, _ in heard if name == "supernet"]
    assert (1, 2) in epochs and epochs[-1] == (2, 2)
    text = phase_text("supernet", supernet.done, supernet.total, supernet.detail)
    assert text.startswith("supernet epoch 2/2 loss ") and " acc " in text


@pytest.mark.integration
def test_a_weight_sharing_job_records_its_supernet_epochs(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    storage = Storage(db_url)
    job = api.submit(storage, _darts_spec())
    heard = []
    assert api.run(storage, job, on_phase=lambda *update: heard.append(update)) == "completed"
    _supernet_records(storage, job, heard)
    storage.close()


@pytest.mark.ray
@pytest.mark.integration
def test_a_weight_sharing_job_on_ray_sends_its_epochs_to_the_driver(tmp_path, monkeypatch):
    """On Ray the search runs in a worker process: its epochs reach the driver through an
    actor the driver drains at every heartbeat."""
    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    storage = Storage(f"sqlite:///{tmp_path / 'nas.db'}")
    job = api.submit(storage, _darts_spec(executor="ray"))
    heard = []
    assert api.run(storage, job, heartbeat_s=0.2,
                   on_phase=lambda *update: heard.append(update)) == "completed"
    _supernet_records(storage, job, heard)
    storage.close()


# ---- the CLI --------------------------------------------------------------------------------
def _nas(*args: str, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _status(url: str, job: int) -> dict:
    result = _nas("--db", url, "status", str(job), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _trials_done(data: dict) -> int | None:
    phases = {p["phase"]: p for p in data["progress"]}
    return phases["trials"]["done"] if "trials" in phases else None


@pytest.mark.system
@pytest.mark.parametrize("runner", ["driver", "serve"])
def test_a_detached_or_served_job_shows_its_progress_advancing_in_status(db_url, tmp_path,
                                                                         procs, runner):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(nb201_spec(
        budget={"trials": 120}, batch_size=1,
        evaluator_args={"table": "nb201-cifar10", "delay_s": 0.05})))
    logs: tuple = (tmp_path / "serve.log",)
    if runner == "serve":
        with open(logs[0], "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "nas", "--db", db_url, "serve", "--poll-s", "0.2"],
                cwd=ROOT, stdout=log, stderr=log))
        storage = Storage(db_url)
        wait_until(storage.servers.live, "the serve process to register", logs=logs)
        storage.close()
    submitted = _nas("--db", db_url, "submit", str(spec), "--json")
    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout)["runner"] == runner
    job = json.loads(submitted.stdout)["job"]
    logs += tuple((tmp_path / "artifacts").rglob("driver.log"))
    seen = []

    def advanced() -> bool:
        data = _status(db_url, job)
        done = _trials_done(data)
        if data["status"] == "running" and done is not None:
            seen.append(done)
        return len(set(seen)) >= 2

    wait_until(advanced, "the trials phase to advance twice while running", timeout=90,
               interval=0.2, logs=logs)
    assert seen == sorted(seen) and seen[-1] < 120
    running = _nas("--db", db_url, "status", str(job))
    assert running.returncode == 0
    line = [x for x in running.stdout.splitlines() if x.startswith("progress: trials ")]
    assert line and "/120" in line[0] and "%" in line[0], running.stdout
    final = wait_until(lambda: (d := _status(db_url, job))["status"] == "completed" and d,
                       "the job to complete", timeout=120, interval=0.3, logs=logs)
    (trials,) = final["progress"]
    assert (trials["done"], trials["total"], trials["fraction"]) == (120, 120, 1.0)
    assert {"phase", "done", "total", "fraction", "detail", "started_at", "updated_at",
            "eta_s"} <= set(trials)
    assert final["trials"]["completed"] == 120  # the other keys are still there


@pytest.mark.system
def test_wait_shows_the_phase_and_closes_with_the_best_and_what_next(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(nb201_spec(budget={"trials": 15})))
    result = _nas("--db", url, "submit", str(spec), "--wait")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "job 1 completed"
    best = Storage(url).jobs.get(1)
    assert best.status == "completed"
    assert "trials 15/15 best " in result.stderr  # the bar
    assert "job 1: 15 trials completed, 0 failed in " in result.stderr
    assert "best: trial " in result.stderr
    for command in (f"--db {url} best 1", f"--db {url} trials 1", f"--db {url} export 1"):
        assert f"`nas {command}" in result.stderr, result.stderr


@pytest.mark.system
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_wait_says_how_to_resume(tmp_path, sig, code, procs):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(nb201_spec(
        budget={"trials": 1000}, batch_size=1,
        evaluator_args={"table": "nb201-cifar10", "delay_s": 0.02})))
    proc = subprocess.Popen([sys.executable, "-m", "nas", "--db", url, "submit", str(spec),
                             "--wait"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    storage = Storage(url)
    wait_until(lambda: storage.jobs.all() and storage.trials.counts(1).get("completed"),
               "trials to complete")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert storage.jobs.get(1).status == "paused"
    lines = [x for x in stderr.splitlines() if "resume" in x]
    assert lines == [f"job 1 paused; `nas --db {url} resume 1` continues it"], stderr
    storage.close()


@pytest.mark.integration
def test_a_resumed_supernet_goes_on_from_the_epoch_it_had_reached(sqlite_url, tmp_path,
                                                                    monkeypatch):
    """Paused during the search (as `nas serve` stopping pauses it), the job's supernet
    phase keeps its epoch; the resumed session starts from it and restarts its clock."""
    import threading

    from nas.driver import Driver

    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    storage = Storage(sqlite_url)
    job = api.submit(storage, _darts_spec(strategy_args={**SEARCH, "epochs": 5}))
    stop, heard = threading.Event(), []

    def listen(phase: str, done: int, total: int | None, detail: dict) -> None:
        heard.append((phase, done, total))
        if phase == "supernet" and done >= 1:
            stop.set()

    assert Driver(storage, job, stop=stop, heartbeat_s=0.2, on_phase=listen).run() == "paused"
    (paused,) = job_progress(storage, job)
    # the epoch the search had reached when it stopped (it finishes the one it is in, so on
    # a loaded machine it may be further than the epoch the listener stopped it at)
    assert paused.phase == "supernet" and 1 <= paused.done <= 5 and paused.total == 5
    heard.clear()
    assert api.run(storage, job, on_phase=listen) == "completed"
    supernet = [(done, total) for phase, done, total in heard if phase == "supernet"]
    assert supernet[0] == (paused.done, 5)  # from where it was, not from 0
    assert supernet[-1] == (5, 5) and [d for d, _ in supernet] == sorted(d for d, _ in supernet)
    phases = {p.phase: p for p in job_progress(storage, job)}
    assert phases["supernet"].started_at > paused.started_at  # this session's clock
    assert (phases["trials"].done, phases["trials"].total) == (2, 2)
    storage.close()
