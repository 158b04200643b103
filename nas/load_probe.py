"""Run a job's driver as a `nas drive` subprocess and sample its memory (RSS) against the
number of completed trials: what `bench/load.py` reports and `tests/test_load.py` bounds.

The driver keeps the keys of the job's architectures (de-duplication), so some growth per
trial is by design; anything well above that is a leak. Needs psutil (the `dev` extra).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from nas import api
from nas.storage import Storage
from nas.storage.schema import trials as trials_table

#: The folder holding this `nas` package: the driver subprocess runs there, so that
#: `python -m nas` is this very package even when it is not installed.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]
#: Points of progress reported (fractions of the budget).
MARKS = (0.1, 0.25, 0.5, 0.75, 1.0)


def load_spec(trials: int, space: str = "hybrid", batch_size: int = 32, parallelism: int = 2,
              seed: int = 0) -> dict:
    """The job: random search, analytic evaluator (no table, no model), local executor."""
    return {
        "name": f"load-{trials}", "space": space, "strategy": "random",
        "evaluator": "analytic", "objectives": [{"metric": "params", "mode": "min"}],
        "budget": {"trials": trials}, "executor": "local", "parallelism": parallelism,
        "batch_size": batch_size, "snapshot_every": 1000, "seed": seed,
    }


@dataclass
class LoadRun:
    """Samples (seconds since start, completed trials, driver RSS bytes) of one driver run."""

    trials: int
    job: int = 0
    status: str = ""
    completed: int = 0
    returncode: int = -1
    stderr: str = ""
    seconds: float = 0.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def rss_at(self, fraction: float) -> int:
        """Driver RSS at the first sample with at least `fraction` of the budget done (the
        last sample, taken just before the driver exited, for 1.0)."""
        need = fraction * self.trials
        for _, done, rss in self.samples:
            if done >= need:
                return rss
        return self.samples[-1][2]

    def time_at(self, fraction: float) -> float:
        need = fraction * self.trials
        return next((t for t, done, _ in self.samples if done >= need), self.seconds)

    def trials_per_s(self, start: float = 0.1, end: float = 1.0) -> float:
        """Throughput between two points of progress (start-up excluded)."""
        return (end - start) * self.trials / max(1e-9, self.time_at(end) - self.time_at(start))

    def growth_per_trial(self, start: float = 0.1, end: float = 1.0) -> float:
        """Driver RSS growth in bytes per trial from `start` to `end` of the budget: the
        highest RSS sampled in between (a leak shows even if the driver frees something at
        the very end) less the RSS at `start`."""
        low, high = start * self.trials, end * self.trials
        peak = max(rss for _, done, rss in self.samples if low <= done <= high)
        return (peak - self.rss_at(start)) / ((end - start) * self.trials)

    def report(self) -> str:
        mib = {f: self.rss_at(f) / 2**20 for f in MARKS}
        curve = ", ".join(f"{int(f * 100)}% {v:.1f}" for f, v in mib.items())
        return (f"{self.trials} trials in {self.seconds:.1f} s, "
                f"{self.trials_per_s():.0f} trials/s (10%-100%); driver RSS MiB: {curve}; "
                f"peak growth 10%-100%: {self.growth_per_trial():.0f} B/trial")


def _completed(storage: Storage, job: int) -> int:
    query = select(func.count()).select_from(trials_table).where(
        trials_table.c.job_id == job, trials_table.c.status == "completed")
    with storage.read() as conn:
        return int(conn.execute(query).scalar_one())


def run_load(url: str, spec: dict, sample_s: float = 0.25, timeout_s: float = 1800) -> LoadRun:
    """Submit `spec` to `url`, run it with a `nas drive` subprocess and sample its RSS."""
    import psutil  # a dev dependency: only this probe needs it

    storage = Storage(url)
    try:
        job = api.submit(storage, spec)
        run = LoadRun(spec["budget"]["trials"], job)
        t0 = time.monotonic()
        err = tempfile.TemporaryFile()  # not a pipe: a full pipe would stall the driver
        # the URL in the environment, not argv (`ps`): it may hold a password
        proc = subprocess.Popen([sys.executable, "-m", "nas", "drive", str(job)],
                                cwd=PACKAGE_PARENT, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "NAS_DB_URL": url})
        watched = psutil.Process(proc.pid)
        try:
            while proc.poll() is None:
                if time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(f"driver still running after {timeout_s} s")
                try:
                    rss = watched.memory_info().rss
                except psutil.NoSuchProcess:
                    break
                run.samples.append((time.monotonic() - t0, _completed(storage, job), rss))
                time.sleep(sample_s)
        finally:
            if proc.poll() is None:
                proc.kill()
            run.returncode = proc.wait()
            err.seek(0)
            run.stderr = err.read().decode(errors="replace")
            err.close()
        run.seconds = time.monotonic() - t0
        final = _completed(storage, job)
        if run.samples:
            run.samples.append((run.seconds, final, run.samples[-1][2]))
        run.status, run.completed = storage.jobs.get(job).status, final
        return run
    finally:
        storage.close()
