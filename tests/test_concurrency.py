"""Eight jobs on one database at once, each run by its own `nas drive` process, with a
reader querying throughout: no lock errors, no lost or doubled trials, and every job ends
with exactly the trials it gets when run alone (the driver is deterministic per seed).

The jobs share the `architectures` and `measurements` rows of the cells they have in common
(the same NAS-Bench-201 space, with HW-NAS-Bench latencies), and pairs of them share a seed
(the same cells in the same order), so their transactions really meet on the same rows.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from nas import api
from nas.cli import app
from nas.storage import Storage, best_trials
from nas.storage.schema import architectures, measurements, trial_device_values, trials
from tests.conftest import ROOT, nb201_spec
from workers.tables import load_table

pytestmark = pytest.mark.system

JOBS = 8
BUDGETS = [60 + 12 * i for i in range(JOBS)]  # 60 .. 144 trials
DELAY_S = 0.03  # per trial, so the jobs are still running when the last driver starts
DEVICE = "pixel3"
LOCK_TEXT = ("locked", "deadlock", "could not serialize")
runner = CliRunner()


@functools.cache
def _latency() -> dict[str, dict[str, float]]:
    """HW-NAS-Bench rows by cell key (what the jobs' benchmark evaluator stores)."""
    return load_table("hw-nas-bench-cifar10").rows


@functools.cache
def _max_ms() -> float:
    """A latency budget on DEVICE that half of the table's cells meet."""
    column = f"{DEVICE}_latency_ms"
    values = sorted(r[column] for r in _latency().values() if column in r)
    return values[len(values) // 2]


def _spec(i: int, delay_s: float) -> dict[str, Any]:
    # jobs i and i + 4 share a seed: their writes to the same rows collide while both run
    spec = nb201_spec(name=f"concurrent-{i}", budget={"trials": BUDGETS[i]},
                      seed=100 + i % 4, parallelism=2, batch_size=1)
    spec["evaluator_args"] = {**spec["evaluator_args"], "delay_s": delay_s}
    return spec


def _device_values(key: str) -> int:
    """Device measurements the benchmark evaluator stores for a cell (its table columns)."""
    return sum(c.endswith(("_latency_ms", "_energy_mj")) for c in _latency().get(key, {}))


def _trials(storage: Storage, job: int) -> list[tuple[int, str, str, float]]:
    return [(r.number, r.key, r.status, r.score) for r in storage.trials.load(job)]


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> list[list[tuple[int, str, str, float]]]:
    """Each job run alone, one after the other, on a database of its own (no delay: the
    delay changes no result)."""
    storage = Storage(f"sqlite:///{tmp_path_factory.mktemp('reference') / 'nas.db'}")
    jobs = [api.submit(storage, _spec(i, 0.0)) for i in range(JOBS)]
    for job in jobs:
        assert api.run(storage, job) == "completed"
    found = [_trials(storage, job) for job in jobs]
    storage.close()
    return found


def _nas_best(url: str, job: int, *device_args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["--db", url, "best", str(job), "--top", "5", *device_args,
                                 "--json"])
    assert result.exit_code == 0, f"nas best {job}: {result.output}\n{result.exception!r}"
    return json.loads(result.stdout)


class Reader:
    """Queries every job while the drivers write: each read must succeed, and what it sees
    must only ever improve (a completed trial never vanishes nor changes its score)."""

    def __init__(self, url: str, jobs: list[int]) -> None:
        self.url, self.jobs = url, jobs
        self.storage = Storage(url, create=False)
        self.best: dict[int, float] = {}
        self.rounds = 0

    def round(self) -> None:
        for job in self.jobs:
            rows = best_trials(self.storage, job, top=3)
            if rows:
                assert rows[0]["score"] >= self.best.get(job, rows[0]["score"]), \
                    f"job {job}: best score went down to {rows[0]['score']}"
                self.best[job] = rows[0]["score"]
            within = best_trials(self.storage, job, top=3, device=DEVICE, max_value=_max_ms())
            assert all(r["device_value"] <= _max_ms() for r in within)
        # the CLI as a user runs it, on one job per round
        job = self.jobs[self.rounds % len(self.jobs)]
        data = _nas_best(self.url, job, "--device", DEVICE, "--max-latency-ms", str(_max_ms()))
        assert all(r["device_value"] <= _max_ms() for r in data["results"])
        self.rounds += 1


def _brute_force_best(rows: list[tuple[int, str, str, float]],
                      max_ms: float | None) -> list[int]:
    """Trial numbers of the 5 best trials (score, then earlier), under the budget if given."""
    def fits(key: str) -> bool:
        latency = _latency().get(key, {}).get(f"{DEVICE}_latency_ms")
        return max_ms is None or (latency is not None and latency <= max_ms)

    ranked = sorted((r for r in rows if fits(r[1])), key=lambda r: (-r[3], r[0]))
    return [r[0] for r in ranked[:5]]


def _max_overlap(storage: Storage, jobs: list[int]) -> int:
    """The most jobs that had trials in flight at the same moment (stored trial times)."""
    events = []
    for job in jobs:
        query = select(func.min(trials.c.started_at), func.max(trials.c.finished_at)) \
            .where(trials.c.job_id == job)
        with storage.read() as conn:
            first, last = conn.execute(query).one()
        events += [(first, 1), (last, -1)]
    running = most = 0
    for _, step in sorted(events):
        running += step
        most = max(most, running)
    return most


def _run_concurrently(url: str, jobs: list[int], reader: Reader,
                      logs: Path) -> list[tuple[int, str]]:
    """One `nas drive` process per job, all at once (stderr to a file each: a full pipe
    would stall a driver); the reader queries until they exit. (exit status, stderr) per
    job."""
    procs = []
    for job in jobs:
        with open(logs / f"driver-{job}.err", "wb") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "nas", "--db", url, "drive", str(job)], cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=err))
    deadline = time.monotonic() + 300
    try:
        while any(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, "drivers still running after 300 s"
            reader.round()
            time.sleep(0.5)  # a round costs ~0.1 s of CPU: leave the 2 cores to the drivers
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.wait(), (logs / f"driver-{job}.err").read_text(errors="replace"))
            for p, job in zip(procs, jobs, strict=True)]


def _check_job(storage: Storage, url: str, job: int, budget: int,
               expected: list[tuple[int, str, str, float]]) -> None:
    assert storage.jobs.get(job).status == "completed"
    assert storage.trials.counts(job) == {"completed": budget}
    rows = _trials(storage, job)
    assert [r[0] for r in rows] == list(range(1, budget + 1))
    assert len({r[1] for r in rows}) == budget, "an architecture was evaluated twice"
    assert rows == expected, "the job's trials differ from the same job run alone"
    # `nas best` agrees with a brute-force ranking of the stored trials
    assert [r["trial"] for r in _nas_best(url, job)["results"]] == \
        _brute_force_best(rows, None)
    data = _nas_best(url, job, "--device", DEVICE, "--max-latency-ms", str(_max_ms()))
    assert [r["trial"] for r in data["results"]] == _brute_force_best(rows, _max_ms())
    assert data["unknown_latency"] == sum(
        f"{DEVICE}_latency_ms" not in _latency().get(r[1], {}) for r in rows)
    # one trial_device_values row per (trial, device column of its cell in the table)
    with storage.read() as conn:
        stored = conn.execute(select(func.count()).select_from(trial_device_values)
                              .where(trial_device_values.c.job_id == job)).scalar_one()
    assert stored == sum(_device_values(r[1]) for r in rows)


def _check_shared_rows(storage: Storage, keys: set[str]) -> None:
    """Architectures and measurements shared by the jobs were written once each."""
    with storage.read() as conn:
        assert conn.execute(select(func.count()).select_from(architectures)).scalar_one() \
            == len(keys)
        stored = conn.execute(select(func.count()).select_from(measurements)).scalar_one()
    assert stored == sum(_device_values(key) for key in keys)


@pytest.mark.slow  # ~25 s each on a quiet machine: 8 driver start-ups of ~3.4 s CPU each
def test_eight_jobs_on_one_database_at_once(db_url, expected, tmp_path):
    storage = Storage(db_url)
    jobs = [api.submit(storage, _spec(i, DELAY_S)) for i in range(JOBS)]
    reader = Reader(db_url, jobs)
    outcomes = _run_concurrently(db_url, jobs, reader, tmp_path)

    for job, (code, stderr) in zip(jobs, outcomes, strict=True):
        assert not any(text in stderr.lower() for text in LOCK_TEXT), \
            f"job {job}: database contention reached the driver:\n{stderr}"
        assert code == 0, f"job {job}: driver exited {code}:\n{stderr}"
    overlap = _max_overlap(storage, jobs)
    assert overlap >= JOBS - 2, f"only {overlap} of {JOBS} jobs ran at the same time"
    assert reader.rounds >= 3, "the reader barely ran"
    for i, job in enumerate(jobs):
        _check_job(storage, db_url, job, BUDGETS[i], expected[i])
    _check_shared_rows(storage, {r[1] for ref in expected for r in ref})
    reader.storage.close()
    storage.close()
