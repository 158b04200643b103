"""`nas serve`: atomic claims on SQLite and PostgreSQL, real serve processes sharing one
database (each job run exactly once; a `kill -9`-ed one's job taken over after its lease
expires), clean stops on SIGTERM, and `nas submit` / `nas resume` queueing for them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, update
from typer.testing import CliRunner

from nas import api
from nas.cli import app
from nas.driver import Driver
from nas.serve import Server
from nas.storage import Jobs, ServerRecord, Storage, new_owner, utcnow
from nas.storage.schema import jobs, servers, trials
from tests.conftest import ROOT, nb201_spec, wait_until

BUDGET = 30
ROUNDS = 30
runner = CliRunner()


def _spec(seed: int, budget: int = BUDGET, delay_s: float = 0.03) -> dict[str, Any]:
    # a few seconds per job on a loaded machine, so that a kill lands in the middle of one
    return nb201_spec(budget={"trials": budget}, evaluator_args={"delay_s": delay_s},
                      parallelism=1, batch_size=2, seed=seed)


def _serve(procs: list[subprocess.Popen], url: str, log: Path, *args: str) -> subprocess.Popen:
    with open(log, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "nas", "--db", url, "serve", *args],
                                cwd=log.parent, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    procs.append(proc)
    return proc


def _server(storage: Storage, name: str) -> ServerRecord | None:
    return next((s for s in storage.servers.all() if s.name == name), None)


def _trial_rows(storage: Storage, job: int) -> list[tuple[int, str, str, int]]:
    with storage.read() as conn:
        return [tuple(r) for r in conn.execute(
            select(trials.c.number, trials.c.status, trials.c.worker, trials.c.architecture_id)
            .where(trials.c.job_id == job).order_by(trials.c.number))]


def _assert_exact_budget(storage: Storage, job: int, budget: int = BUDGET) -> set[str]:
    """The job completed with trials 1..budget, each once, no architecture twice; returns
    the processes (host:pid) that evaluated its trials."""
    assert storage.jobs.get(job).status == "completed"
    rows = _trial_rows(storage, job)
    assert [r[0] for r in rows] == list(range(1, budget + 1))
    assert {r[1] for r in rows} == {"completed"}
    assert len({r[3] for r in rows}) == budget
    return {r[2] for r in rows}


def _claims(log: Path) -> list[tuple[str, int]]:
    return [(how, int(job)) for how, job in
            re.findall(r"(claimed|taking over) job (\d+)", log.read_text())]


# ---- the claim itself ------------------------------------------------------------------------
@pytest.mark.integration
def test_racing_claimers_get_each_job_exactly_once(db_url):
    """8 claimers on their own connections race for one pending job: one wins, in each of
    `ROUNDS` rounds. Then they drain 6 jobs concurrently: every job is claimed by exactly
    one of them, oldest first."""
    storage = Storage(db_url)
    first = api.submit(storage, _spec(0))
    claimers = [Storage(db_url) for _ in range(8)]
    owners = [new_owner() for _ in claimers]
    won: list[list[int]] = []
    barrier = threading.Barrier(len(claimers))

    def race(i: int, drain: bool) -> None:
        barrier.wait()
        while (job := claimers[i].jobs.claim(owners[i], ttl_s=60)) is not None:
            won[i].append(job)
            if not drain:
                return

    def run_all(drain: bool) -> None:
        threads = [threading.Thread(target=race, args=(i, drain)) for i in range(len(claimers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)

    for _ in range(ROUNDS):  # many rounds: a lost race must show up, not be lucky timing
        won = [[] for _ in claimers]
        run_all(drain=False)
        assert sorted(j for w in won for j in w) == [first]
        winner = next(i for i, w in enumerate(won) if w)
        assert storage.jobs.get(first).lease_owner == owners[winner]
        storage.jobs.release_leases(owners[winner])

    more = [first] + [api.submit(storage, _spec(i)) for i in range(1, 6)]
    won = [[] for _ in claimers]
    run_all(drain=True)
    assert sorted(j for w in won for j in w) == more
    for w in won:
        assert w == sorted(w)  # each claimer takes the oldest job left
    for c in claimers:
        c.close()


def test_what_is_claimable_and_in_which_order(db_url):
    """Pending jobs and running jobs whose lease expired (a dead driver), oldest first; never
    a live lease, nor paused, completed, failed or cancelled jobs."""
    storage = Storage(db_url)
    ids = {name: api.submit(storage, _spec(i)) for i, name in enumerate(
        ["live", "paused", "expired", "completed", "pending", "failed", "cancelled",
         "pending_live"])}
    now = utcnow()
    states = {
        "live": ("running", "host:1:live", now + timedelta(seconds=60)),
        "expired": ("running", "host:1:dead", now - timedelta(seconds=1)),
        "pending_live": ("pending", "host:1:claiming", now + timedelta(seconds=60)),
        "paused": ("paused", None, None), "completed": ("completed", None, None),
        "failed": ("failed", None, None), "cancelled": ("cancelled", None, None),
    }
    with storage.engine.begin() as conn:
        for name, (status, owner, expires) in states.items():
            conn.execute(update(jobs).where(jobs.c.id == ids[name]).values(
                status=status, lease_owner=owner, lease_expires_at=expires))
    me = new_owner()
    assert storage.jobs.claim(me, ttl_s=30) == ids["expired"]
    assert storage.jobs.claim(me, ttl_s=30) == ids["pending"]
    assert storage.jobs.claim(me, ttl_s=30) is None
    job = storage.jobs.get(ids["expired"])
    assert job.lease_owner == me and job.lease_expires_at > utcnow()
    assert storage.jobs.get(ids["live"]).lease_owner == "host:1:live"
    assert storage.jobs.release_leases(me) == 2
    assert storage.jobs.claim(me, ttl_s=30) == ids["expired"]


@pytest.mark.integration
def test_once_runs_one_job_in_process_then_exits(sqlite_url):
    storage = Storage(sqlite_url)
    assert Server(storage, once=True, poll_s=0.2, log=lambda line: None).run() == 0
    first, second = (api.submit(storage, _spec(i, budget=12, delay_s=0.0)) for i in (1, 2))
    lines: list[str] = []
    assert Server(storage, once=True, poll_s=0.2, name="cron", log=lines.append).run() == 1
    _assert_exact_budget(storage, first, budget=12)
    assert storage.jobs.get(second).status == "pending"
    assert storage.jobs.get(second).lease_owner is None
    assert any(f"claimed job {first}" in line for line in lines)
    assert storage.servers.all() == []  # a clean exit leaves the registry


@pytest.mark.integration
def test_a_cancelled_takeover_is_cancelled_and_a_broken_job_fails_once(sqlite_url):
    """A dead driver's job whose cancel was requested is cancelled, not run; a job whose
    stored spec cannot be read is marked failed instead of going back to the queue."""
    storage = Storage(sqlite_url)
    cancelled = api.submit(storage, _spec(1))
    broken = api.submit(storage, _spec(2))
    with storage.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == cancelled).values(
            status="running", cancel_requested=True, lease_owner="elsewhere:1:gone",
            lease_expires_at=utcnow() - timedelta(seconds=1)))
        conn.execute(update(jobs).where(jobs.c.id == broken).values(
            spec={**_spec(2), "budget": "no-such-budget"}))  # fails before the driver runs
    lines: list[str] = []
    assert Server(storage, once=True, poll_s=0.2, log=lines.append).run() == 1
    assert storage.jobs.get(cancelled).status == "cancelled"
    assert storage.trials.counts(cancelled) == {}
    assert Server(storage, once=True, poll_s=0.2, log=lines.append).run() == 1
    job = storage.jobs.get(broken)
    assert job.status == "failed" and "budget" in job.error, job.error
    assert job.lease_owner is None
    assert Server(storage, once=True, poll_s=0.2, log=lines.append).run() == 0


def test_a_claim_retried_after_it_landed_returns_the_same_job(db_url):
    """The claim's COMMIT landed but its reply was lost: the retry finds the job already
    leased to this serve process (and not among those it runs) and returns it."""
    storage = Storage(db_url)
    first, second = (api.submit(storage, _spec(i)) for i in (1, 2))
    owner = new_owner()
    claim = Jobs.claim.__wrapped__  # the undecorated method: one attempt
    assert claim(storage.jobs, owner, 30) == first  # landed; the caller never heard of it
    assert claim(storage.jobs, owner, 30, [], replay=True) == first
    assert claim(storage.jobs, owner, 30, [first], replay=True) == second  # first runs already
    assert claim(storage.jobs, owner, 30, [first, second], replay=True) is None


@pytest.mark.system
def test_a_cancel_between_the_claim_and_the_driver_start_is_kept(db_url):
    """The user cancels a job a serve process has just claimed: the driver that then starts
    stops at its first heartbeat (before, starting the job withdrew the request)."""
    storage = Storage(db_url)
    job = api.submit(storage, _spec(1))
    owner = new_owner()  # this process: a live lease holder
    assert storage.jobs.claim(owner, ttl_s=30) == job
    assert storage.jobs.request_cancel(job) == "cancelling"
    driver = Driver(storage, job, heartbeat_s=0.05)
    driver.owner = owner
    assert driver.run() == "cancelled"
    assert storage.jobs.get(job).status == "cancelled"
    assert storage.trials.counts(job).get("completed", 0) < BUDGET
    # resuming the cancelled job withdraws the old request: it runs to the end
    assert api.resume(storage, job) == "completed"
    assert storage.trials.counts(job) == {"completed": BUDGET}


# ---- real serve processes ---------------------------------------------------------------------
@pytest.mark.system
def test_two_servers_run_each_job_once_and_take_over_a_killed_ones_job(db_url, tmp_path, procs):
    storage = Storage(db_url)
    queued = [api.submit(storage, _spec(seed)) for seed in range(6)]
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    args = ("--poll-s", "0.3", "--lease-ttl-s", "3")
    a = _serve(procs, db_url, logs[0], *args, "--name", "A")
    b = _serve(procs, db_url, logs[1], *args, "--name", "B")

    def a_mid_job() -> int | None:  # a job A runs, with some but not all trials done
        server = _server(storage, "A")
        for job in server.jobs if server else []:
            if 4 <= storage.trials.counts(job).get("completed", 0) <= BUDGET - 10:
                return job
        return None

    victim = wait_until(a_mid_job, "serve A in the middle of a job", logs=logs)
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    job = storage.jobs.get(victim)
    assert job.status == "running" and job.lease_owner.startswith(f"{_host()}:{a.pid}:")
    done_by_a = storage.trials.counts(victim).get("completed", 0)

    wait_until(lambda: all(storage.jobs.get(j).status == "completed" for j in queued),
          "every job to complete", timeout=90, logs=logs)
    a_worker, b_worker = f"{_host()}:{a.pid}", f"{_host()}:{b.pid}"
    for j in queued:
        workers = _assert_exact_budget(storage, j)
        if j == victim:  # A's finished trials kept, the rest run by B
            assert workers == {a_worker, b_worker}
        else:  # run start to end by one process
            assert workers in ({a_worker}, {b_worker}), (j, workers)
    assert sum(1 for r in _trial_rows(storage, victim) if r[2] == a_worker) >= done_by_a

    claims_a, claims_b = _claims(logs[0]), _claims(logs[1])
    assert ("taking over", victim) in claims_b and ("claimed", victim) in claims_a
    started = sorted(j for how, j in claims_a + claims_b if how == "claimed")
    assert started == queued  # each job claimed once, plus the one takeover
    assert [j for how, j in claims_a + claims_b if how == "taking over"] == [victim]

    servers = {s.name: s for s in storage.servers.all()}
    assert servers["A"].alive is False and servers["B"].alive is True
    assert servers["B"].jobs == ()
    listed = json.loads(runner.invoke(app, ["--db", db_url, "servers", "--json"]).stdout)
    assert {(s["name"], s["alive"]) for s in listed} == {("A", False), ("B", True)}
    b.send_signal(signal.SIGTERM)
    assert b.wait(timeout=30) == 0
    assert [s.name for s in storage.servers.all()] == ["A"]  # B left the registry


@pytest.mark.system
def test_submit_and_resume_queue_for_a_live_serve_and_sigterm_pauses(tmp_path, procs):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(3, budget=60, delay_s=0.08)))
    log = tmp_path / "s1.log"
    s1 = _serve(procs, url, log, "--poll-s", "0.3", "--max-jobs", "2", "--name", "S1")
    wait_until(lambda: _server(storage, "S1"), "S1 to register", logs=(log,))

    queued = [_nas_json("--db", url, "submit", str(spec_file), "--set", f"seed={seed}")
              for seed in (4, 5)]
    assert all(q["runner"] == "serve" and q["servers"] == ["S1"] for q in queued)
    first, second = (q["job"] for q in queued)
    both = wait_until(lambda: sorted(_server(storage, "S1").jobs) == [first, second],
                 "S1 to run both jobs at once (--max-jobs 2)", logs=(log,))
    assert both
    wait_until(lambda: storage.trials.counts(second).get("completed", 0) >= 4, "progress",
          logs=(log,))
    s1.send_signal(signal.SIGTERM)
    assert s1.wait(timeout=30) == 0, log.read_text()
    paused = [storage.jobs.get(j) for j in (first, second)]
    assert {j.status for j in paused} <= {"paused", "completed"}
    assert "paused" in {j.status for j in paused}
    assert all(j.lease_owner is None for j in paused)
    assert storage.servers.all() == []

    log2 = tmp_path / "s2.log"
    _serve(procs, url, log2, "--poll-s", "0.3", "--name", "S2")
    wait_until(lambda: _server(storage, "S2"), "S2 to register", logs=(log2,))
    for job in (j.id for j in paused if j.status == "paused"):
        resumed = _nas_json("--db", url, "resume", str(job))
        assert resumed == {"job": job, "status": "pending", "runner": "serve",
                           "servers": ["S2"]}
    wait_until(lambda: all(storage.jobs.get(j).status == "completed" for j in (first, second)),
          "S2 to finish the resumed jobs", timeout=90, logs=(log, log2))
    for job in (first, second):
        _assert_exact_budget(storage, job, budget=60)


@pytest.mark.system
def test_submit_without_a_live_serve_spawns_a_driver_and_says_so(tmp_path, procs):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    dead = new_owner()
    storage.servers.register("gone", dead, poll_s=0.1, max_jobs=1)
    with storage.engine.begin() as conn:  # silent for more than 3 poll periods and 5 s
        conn.execute(update(servers).values(heartbeat_at=utcnow() - timedelta(seconds=6)))
    assert storage.servers.live() == []
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(9, budget=8, delay_s=0.0)))
    result = runner.invoke(app, ["--db", url, "submit", str(spec_file)])
    assert result.exit_code == 0, result.stderr
    assert "no `nas serve` process is running" in result.stdout
    job = int(re.search(r"job (\d+)", result.stdout).group(1))
    wait_until(lambda: storage.jobs.get(job).status == "completed", "the detached driver")
    _assert_exact_budget(storage, job, budget=8)


def test_bad_serve_options_are_one_line_errors(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    for args, message in ((["--poll-s", "0"], "--poll-s must be a positive"),
                          (["--lease-ttl-s", "0.5"], "--lease-ttl-s must be at least 1"),
                          (["--max-jobs", "0"], "--max-jobs must be at least 1")):
        result = runner.invoke(app, ["--db", url, "serve", *args])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr


def _nas_json(*args: str) -> Any:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _host() -> str:
    import socket

    return socket.gethostname()
