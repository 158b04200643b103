"""Server time of `nas dashboard` over one job of 10^5 trials, on SQLite and PostgreSQL, and
of `nas trials --limit 50` on the same job.

Fills a database the fastest existing way (bench/query.py's bulk insert of a synthetic
search: space `synthetic-bench`, 3% failed trials, pixel3/raspi4/edgegpu latencies), then
times each request through the ASGI application in-process (Starlette's TestClient: the
server's whole work, no network): the job page (its HTML, and the status JSON it polls every
2 s), a trials-table page (the first page sorted by score, a deep page, failed trials only,
sorted by a metric), the Pareto panel under a budget, the jobs list, the charts (every
trial's point, fetched by the page once the trial counts change). `nas trials JOB --limit
50` is timed in-process too (CliRunner: the command's work, without the interpreter's
start), and once as a subprocess for the wall time a user sees. Medians and spreads (min,
max) of repeats after one warm-up call; for `nas trials`, its CPU time as well.

Goals (issue 16): job page <= 300 ms, table page <= 100 ms.

    python bench/dashboard.py            # 10^5 trials, SQLite file + PostgreSQL
    python bench/dashboard.py --quick    # CI: 10^4 trials, fewer repeats (well under 2 min)

PostgreSQL: a database `nas_bench_dashboard` is created through the admin URL (env
NAS_BENCH_PG_ADMIN, default postgresql://postgres@127.0.0.1:5432/postgres) and dropped at
the end; if the server cannot be reached the PostgreSQL half is skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402

from bench.query import PG_ADMIN_URL, Data, fill, pg_admin  # noqa: E402
from nas.storage import Storage  # noqa: E402

PG_DB = "nas_bench_dashboard"
GOALS_MS = {"job page": 300.0, "table page": 100.0}
FAILED: list[str] = []


def requests_for(job: int, trials: int, budget: float) -> list[tuple[str, str, str]]:
    """(name, goal kind or "", path) of every request timed."""
    deep = max(0, (trials // 2) // 50 * 50)
    return [
        ("job page (HTML)", "job page", f"/jobs/{job}"),
        ("job status JSON (polled)", "job page", f"/api/jobs/{job}"),
        ("table: first page by score", "table page", f"/api/jobs/{job}/trials?limit=50"),
        (f"table: page at offset {deep:,}", "table page",
         f"/api/jobs/{job}/trials?limit=50&offset={deep}"),
        ("table: failed only", "table page",
         f"/api/jobs/{job}/trials?status=failed&limit=50"),
        ("table: sorted by metric", "table page",
         f"/api/jobs/{job}/trials?sort=valid_acc&order=asc&limit=50"),
        ("slider: nas best under budget", "", f"/api/jobs/{job}/best?device=pixel3"
                                              f"&max_latency_ms={budget:.3f}"),
        ("jobs list JSON", "", "/api/jobs"),
        ("Pareto figure (cached)", "", f"/api/jobs/{job}/pareto?device=pixel3"),
        ("chart: history (cached)", "", f"/api/jobs/{job}/charts/history"),
        ("chart: importance (cached)", "", f"/api/jobs/{job}/charts/importance"),
        ("chart: parallel (cached)", "", f"/api/jobs/{job}/charts/parallel"),
    ]


def uncached_for(job: int) -> list[tuple[str, str]]:
    """The heavy answers computed once per finished trial (the first request after one)."""
    return [("Pareto figure, computed", f"/api/jobs/{job}/pareto?device=pixel3"),
            ("chart: history, computed", f"/api/jobs/{job}/charts/history"),
            ("chart: importance, computed", f"/api/jobs/{job}/charts/importance"),
            ("chart: parallel, computed", f"/api/jobs/{job}/charts/parallel")]


def timed(call, repeats: int, clock=time.perf_counter) -> list[float]:  # noqa: ANN001
    """Milliseconds of `clock` (wall by default; `time.process_time`: this process's CPU)
    per call, after a warm-up call."""
    call()  # warm-up (first query plans, imports)
    times = []
    for _ in range(repeats):
        t0 = clock()
        call()
        times.append(1000.0 * (clock() - t0))
    return times


def line(name: str, times: list[float], goal: float | None) -> str:
    median = statistics.median(times)
    verdict = ""
    if goal is not None:
        verdict = f"  goal <= {goal:.0f} ms: " + ("met" if median <= goal else "MISSED")
    return (f"  {name:<42} median {median:8.1f} ms  (min {min(times):.1f}, max "
            f"{max(times):.1f}, n={len(times)}){verdict}")


def bench_requests(label: str, storage: Storage, job: int, data: Data, repeats: int,
                   chart_repeats: int) -> None:
    import numpy as np
    from starlette.testclient import TestClient

    from nas.dashboard.app import create_app

    budget = float(np.nanquantile(data.preferred_pixel3(), 0.25))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = TestClient(create_app(storage))
    for name, kind, path in requests_for(job, data.n, budget):
        def get(path: str = path) -> None:
            response = client.get(path)
            if response.status_code != 200:
                raise SystemExit(f"{label} {path}: HTTP {response.status_code}: "
                                 f"{response.text[:300]}")

        times = timed(get, repeats)
        goal = GOALS_MS.get(kind)
        if goal is not None and statistics.median(times) > goal:
            FAILED.append(f"{label}: {name}")
        print(line(name, times, goal), flush=True)
    for name, path in uncached_for(job):
        times = []
        for _ in range(chart_repeats):
            client.app.state.dashboard.cache.clear()
            t0 = time.perf_counter()
            response = client.get(path)
            times.append(1000.0 * (time.perf_counter() - t0))
            assert response.status_code == 200, response.text[:300]
        drawn = "" if b'"message"' not in response.content[:200] else \
            "  (not drawn: " + response.json()["message"][:70] + ")"
        print(line(name, times, None) + drawn, flush=True)


def bench_cli(label: str, url: str, job: int, repeats: int) -> None:
    from typer.testing import CliRunner

    from nas.cli import app

    runner = CliRunner()

    def run(*extra: str) -> None:
        result = runner.invoke(app, ["--db", url, "trials", str(job), "--limit", "50", *extra])
        if result.exit_code != 0:
            raise SystemExit(f"{label} nas trials: exit {result.exit_code}: {result.output}")

    for extra in ((), ("--json",)):
        name = " ".join(("nas trials --limit 50", *extra))
        times = timed(lambda extra=extra: run(*extra), repeats)
        if statistics.median(times) > GOALS_MS["table page"]:
            FAILED.append(f"{label}: {name}")
        print(line(f"{name} (in-process)", times, GOALS_MS["table page"]))
        # CPU time too: on a loaded machine the wall times above wait for a core
        print(line("  CPU time of it", timed(lambda extra=extra: run(*extra), repeats,
                                             clock=time.process_time), None))
    from nas.storage import trials_page

    storage = Storage(url)
    try:  # the command less opening the database (engine, schema version check)
        query = timed(lambda: trials_page(storage, job, limit=50), repeats)
    finally:
        storage.close()
    print(line("  of which trials_page(limit=50)", query, None))
    opening = timed(lambda: Storage(url).close(), repeats)
    print(line("  of which opening the database", opening, None))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas", "trials", str(job), "--limit", "50"],
                   check=True, capture_output=True, env={**os.environ, "NAS_DB_URL": url})
    print(f"  {'nas trials --limit 50 (a process)':<42} wall {time.perf_counter() - t0:8.2f} s"
          " (once: interpreter start and imports included)", flush=True)


def bench_database(label: str, url: str, data: Data, repeats: int, chart_repeats: int) -> None:
    storage = Storage(url)
    try:
        t0 = time.perf_counter()
        job = fill(storage, data)
        print(f"\n[{label}] {data.n:,} trials stored in {time.perf_counter() - t0:.1f} s",
              flush=True)
        bench_requests(label, storage, job, data, repeats, chart_repeats)
        bench_cli(label, url, job, repeats)
    finally:
        storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test: 10^4 trials")
    parser.add_argument("--trials", type=int, help="trials of the job (default 10^5)")
    parser.add_argument("--repeats", type=int, help="timed repeats per request (default 9)")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="one database only")
    args = parser.parse_args()
    n = args.trials or (10_000 if args.quick else 100_000)
    repeats = args.repeats or (5 if args.quick else 9)
    chart_repeats = 1 if args.quick else 3
    data = Data(n)
    print(f"one job of {n:,} trials; server time per request (in-process ASGI), "
          f"{repeats} repeats after a warm-up")
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="nas-bench-dashboard-") as tmp:
            bench_database("SQLite file", f"sqlite:///{Path(tmp) / 'dashboard.db'}", data,
                           repeats, chart_repeats)
    if args.only in (None, "postgresql"):
        admin = pg_admin()
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)'))
                conn.execute(text(f'CREATE DATABASE "{PG_DB}"'))
        except OperationalError as exc:
            print(f"\n[PostgreSQL] skipped: cannot reach {PG_ADMIN_URL}: "
                  f"{str(exc.orig).splitlines()[0]}")
        else:
            try:
                bench_database("PostgreSQL", PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{PG_DB}",
                               data, repeats, chart_repeats)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)'))
        admin.dispose()
    if FAILED:
        print("\ngoals missed: " + "; ".join(FAILED))
    else:
        print(f"\nevery goal met (job page <= {GOALS_MS['job page']:.0f} ms, table page <= "
              f"{GOALS_MS['table page']:.0f} ms)")


if __name__ == "__main__":
    main()
