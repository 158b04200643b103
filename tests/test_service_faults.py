"""Regression tests for the service faults of issue 17: lost cancels, trials that kill their
process, SIGTERM under Ray, a serve process that looked dead while starting a job, the first
use of an empty database from several processes, jobs whose every trial failed, and trials
that hang. Each runs the real CLI, real processes and real databases."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from nas import api
from nas.storage import Storage
from tests.conftest import ROOT, nb201_spec, wait_until

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
    return storage.get_job(job)["status"]


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


def _driver_gone(storage: Storage, job: int) -> bool:
    row = storage.get_job(job)
    return row["status"] not in ("pending", "running") or row["lease_owner"] is None \
        and row["status"] != "running"


# ---- item 1: a cancel right after a resume is kept ------------------------------------------
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
               and storage.get_job(job)["lease_owner"] is None,
               "the job to end cancelled", timeout=90,
               logs=tuple(log.rglob("driver.log")))
    time.sleep(3)  # a driver that had withdrawn the cancel would be running trials by now
    assert status_of(storage, job) == "cancelled"
    assert storage.trial_counts(job).get("completed", 0) < budget


def test_resume_withdraws_an_earlier_cancel(sqlite_url):
    """The user's own resume of a cancelled job withdraws that old cancel (it runs to the
    end); a cancel requested after the resume stops it."""
    storage = Storage(sqlite_url)
    job = api.submit(storage, nb201_spec(budget={"trials": 12}))
    assert storage.request_cancel(job) == "cancelled"
    assert api.run(storage, job) == "cancelled"  # running it is not resuming it
    api.reopen(storage, job)
    assert storage.request_cancel(job) == "cancelled"  # a new cancel, after the resume
    assert api.run(storage, job) == "cancelled"
    assert storage.trial_counts(job) == {}
    assert api.resume(storage, job) == "completed"
    assert storage.trial_counts(job) == {"completed": 12}


# ---- item 10: a job whose every trial failed has failed --------------------------------------
def _partial_table(path: Path, rows: int) -> Path:
    """A benchmark table holding the first `rows` rows of the NB201 table only."""
    with gzip.open(TABLE, "rt") as handle:
        reader = csv.reader(handle)
        kept = [next(reader) for _ in range(rows + 1)]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)
    return path


def test_a_job_whose_every_trial_failed_is_failed_with_the_reason(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    table = _partial_table(tmp_path / "one.csv", rows=1)
    spec = nb201_spec(strategy="random", strategy_args={},
                      evaluator_args={"table": str(table)}, budget={"trials": 6})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    result = nas_cli(tmp_path, url, "submit", "job.yaml", "--wait", "--json")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "failed"
    assert data["trials"]["failed"] == 6 and data["trials"]["completed"] == 0
    assert data["error"].startswith("every one of the 6 trials failed; the most common "
                                    "error (1 of 6): architecture |"), data["error"]
    assert "is not in table" in data["error"]


def test_a_job_with_some_completed_trials_is_completed(tmp_path):
    storage = Storage(f"sqlite:///{tmp_path / 'nas.db'}")
    table = _partial_table(tmp_path / "part.csv", rows=4000)  # about a quarter of the cells
    spec = nb201_spec(strategy="random", strategy_args={}, budget={"trials": 24},
                      evaluator_args={"table": str(table)})
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    counts = storage.trial_counts(job)
    assert counts.get("completed", 0) > 0 and counts.get("failed", 0) > 0, counts
