"""`best` under a device latency budget over 10^6 stored trials, on SQLite and PostgreSQL.

Fills a database with a synthetic search (space `synthetic-bench`, 10^6 distinct
architectures, one job holding every trial: the worst case for a per-job query) through
bulk inserts with SQLAlchemy Core into the real schema (created by `Storage`, i.e. Alembic),
then times `nas.storage.best_trials(storage, job, top=5, device="pixel3", max_value=X)`
(median of repeats, after one warm-up call) without a budget and for budgets at the 1st
(tight), 5th, 10th, 25th, 50th (medium) and 90th (loose) percentile of the stored pixel3
latencies. Each answer is checked against a brute-force answer computed in Python from the
generated data (a wrong answer makes the script exit 1), and each line says which ways
`best_trials` went (see `plan_of`).
A second, small job shares some architectures (the job filter must hold). PostgreSQL gets
`VACUUM ANALYZE` after the load (what autovacuum does soon after); SQLite is used as nas
leaves it.

Realistic shape: accuracy-like scores that rise with latency (the fast architectures are
the weak ones, so a tight budget has to look past many slow, good trials), a few failed
trials, pixel3 latency from the `benchmark` source for ~90% of architectures and a
`measured` pixel3 value (preferred) for ~5%, plus raspi4 and edgegpu latency and edgegpu
energy rows (~3.8 measurement rows per architecture).

    python bench/query.py                  # 10^6 trials, SQLite file + PostgreSQL
    python bench/query.py --quick          # CI smoke test: 10^5 trials
    python bench/query.py --explain        # also the plan of best_trials' last query

PostgreSQL: a database `nas_bench_query` is created through the admin URL (env
NAS_BENCH_PG_ADMIN, default postgresql://postgres@127.0.0.1:5432/postgres) and dropped at
the end; if the server cannot be reached the PostgreSQL half is skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, event, insert, text  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402

from nas.storage import Storage, best_trials  # noqa: E402
from nas.storage._device_values import refresh_device_values  # noqa: E402
from nas.storage.schema import SOURCE_RANK, architectures, jobs, measurements, trials  # noqa: E402

PG_ADMIN_URL = os.environ.get("NAS_BENCH_PG_ADMIN",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DB = "nas_bench_query"
SPACE = "synthetic-bench"
TARGET_MS = 100.0
PERCENTILES = (1, 5, 10, 25, 50, 90)
JOB_ID = [0]
WRONG: list[str] = []
CHUNK = 20_000
DECISIONS, CHOICES = 9, 5  # 5^9 = 1,953,125 >= 10^6 distinct architectures


# ---- synthetic data -------------------------------------------------------------------------
class Data:
    """The generated search, as arrays indexed by architecture id - 1 (= trial number - 1)."""

    def __init__(self, n: int, seed: int = 0, jobs: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.jobs = jobs  # trial i belongs to job i % jobs; the queried job is the first
        self.order = rng.permutation(5 ** DECISIONS)[:n]  # which DNA each architecture has
        # pixel3 latency: log-normal around 15 ms. Accuracy-like score: a quality q that
        # correlates 0.7 with log latency, mapped to a long left tail below a ceiling of 92
        # (median 88, like NAS-Bench-201's valid_acc).
        z = rng.normal(0.0, 1.0, n)
        self.latency = 15.0 * np.exp(0.35 * z)
        q = 0.7 * z + np.sqrt(1 - 0.7 ** 2) * rng.normal(0.0, 1.0, n)
        self.score = np.maximum(92.0 - 4.0 * np.exp(-0.8 * q), 10.0).round(4)
        self.failed = rng.random(n) < 0.03
        self.has_benchmark = rng.random(n) < 0.90  # HW-NAS-Bench misses ~20% of NB201
        self.has_measured = rng.random(n) < 0.05
        self.measured = self.latency * np.exp(rng.normal(0.05, 0.08, n))  # a bit slower
        self.raspi = self.latency * np.exp(rng.normal(np.log(6.0), 0.2, n))
        self.edgegpu = np.exp(rng.normal(np.log(5.0), 0.3, n))
        self.energy = self.edgegpu * np.exp(rng.normal(np.log(4.0), 0.2, n))

    def key(self, i: int) -> str:
        code, digits = int(self.order[i]), []
        for _ in range(DECISIONS):
            code, d = divmod(code, CHOICES)
            digits.append(d)
        return "-".join(map(str, digits))

    def preferred_pixel3(self) -> np.ndarray:
        """The value `best` must use: measured (rank 0) over benchmark (rank 2), else NaN."""
        value = np.where(self.has_benchmark, self.latency, np.nan)
        return np.where(self.has_measured, self.measured, value)

    def expected(self, top: int, max_value: float | None) -> list[int]:
        """Brute force: trial numbers of the answer (score desc, number asc)."""
        ok = ~self.failed & (np.arange(self.n) % self.jobs == 0)
        if max_value is not None:
            value = self.preferred_pixel3()
            ok &= ~np.isnan(value) & (np.nan_to_num(value, nan=np.inf) <= max_value)
        numbers = np.nonzero(ok)[0]
        ranked = numbers[np.lexsort((numbers, -self.score[numbers]))][:top]
        return [int(i) // self.jobs + 1 for i in ranked]


def fill(storage: Storage, data: Data) -> int:
    """Bulk-insert the job, architectures, trials and measurements; returns the job id."""
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    spec = {"name": "bench-query", "space": SPACE, "strategy": "random",
            "evaluator": "benchmark", "objectives": [{"metric": "valid_acc", "mode": "max"}],
            "budget": {"trials": data.n}, "executor": "ray", "seed": 0}
    with storage.engine.begin() as conn:
        job_ids = [conn.execute(insert(jobs).returning(jobs.c.id), {
            "name": f"bench-query-{j}", "spec": spec, "status": "completed", "seed": j,
            "created_at": now, "updated_at": now, "snapshot_told": data.n // data.jobs,
            "snapshot_asked": data.n // data.jobs, "elapsed_s": 3600.0,
            "cancel_requested": False,
        }).scalar_one() for j in range(data.jobs)]
    job = job_ids[0]
    # an unrelated job sharing the first 1% of the architectures (the filter must hold)
    with storage.engine.begin() as conn:
        other = conn.execute(insert(jobs).returning(jobs.c.id), {
            "name": "other", "spec": spec, "status": "completed", "seed": 1,
            "created_at": now, "updated_at": now, "snapshot_told": 0, "snapshot_asked": 0,
            "elapsed_s": 0.0, "cancel_requested": False}).scalar_one()
    for start in range(0, data.n, CHUNK):
        stop = min(start + CHUNK, data.n)
        arch_rows, trial_rows, meas_rows = [], [], []
        for i in range(start, stop):
            aid = i + 1
            key = data.key(i)
            arch_rows.append({"id": aid, "space": SPACE, "key": key,
                              "arch": {"dna": [int(c) for c in key.split("-")]},
                              "params": 1_000_000 + (aid * 7919) % 900_000, "flops": None})
            failed = bool(data.failed[i])
            t0 = now + timedelta(seconds=0.5 * i)
            score = None if failed else float(data.score[i])
            trial_rows.append({
                "id": aid, "job_id": job_ids[i % data.jobs], "number": i // data.jobs + 1,
                "architecture_id": aid,
                "status": "failed" if failed else "completed", "attempt": 1,
                "worker": "bench:1", "started_at": t0, "finished_at": t0 + timedelta(0.4),
                "metrics": None if failed else {"valid_acc": score},
                "score": score, "objectives": None if failed else [score],
                "feasible": None if failed else True,
                "error": "synthetic failure" if failed else None})

            found = []
            if data.has_benchmark[i]:
                found += [("pixel3", "latency_ms", data.latency[i], "benchmark"),
                          ("raspi4", "latency_ms", data.raspi[i], "benchmark"),
                          ("edgegpu", "latency_ms", data.edgegpu[i], "benchmark"),
                          ("edgegpu", "energy_mj", data.energy[i], "benchmark")]
            if data.has_measured[i]:
                found.append(("pixel3", "latency_ms", data.measured[i], "measured"))
            meas_rows += [{"architecture_id": aid, "device": device, "metric": metric,
                           "value": float(value), "source": source,
                           "source_rank": SOURCE_RANK[source], "created_at": now}
                          for device, metric, value, source in found]
        with storage.engine.begin() as conn:
            conn.execute(insert(architectures), arch_rows)
            conn.execute(insert(trials), trial_rows)
            if meas_rows:
                conn.execute(insert(measurements), meas_rows)
    with storage.engine.begin() as conn:
        conn.execute(insert(trials), [
            {"id": data.n + i + 1, "job_id": other, "number": i + 1, "architecture_id": i + 1,
             "status": "completed", "attempt": 1, "score": 99.0, "metrics": {"valid_acc": 99.0},
             "objectives": [99.0], "feasible": True}
            for i in range(max(1, data.n // 100))])
    t0 = time.perf_counter()
    with storage.engine.begin() as conn:  # what Storage keeps in step as results arrive
        refresh_device_values(conn)
    print(f"  trial_device_values rebuilt in {time.perf_counter() - t0:.1f} s", flush=True)
    with storage.engine.begin() as conn:
        if storage.dialect == "postgresql":  # explicit ids: move the sequences past them
            for table in ("architectures", "trials", "measurements"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
    if storage.dialect == "postgresql":  # what autovacuum would do soon after a bulk load
        with storage.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    return job


# ---- timing ---------------------------------------------------------------------------------
def time_query(storage: Storage, job: int, max_value: float | None, repeats: int
               ) -> tuple[list[float], list[dict]]:
    device = "pixel3" if max_value is not None else None
    rows = best_trials(storage, job, top=5, device=device, max_value=max_value)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows = best_trials(storage, job, top=5, device=device, max_value=max_value)
        times.append(1000.0 * (time.perf_counter() - t0))
    return times, rows


def explain(storage: Storage, job: int, max_value: float) -> str:
    """The plan of the exact SQL and parameters `best_trials` sends (captured on the engine)."""
    captured: list[tuple[str, object]] = []

    def spy(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        captured.append((statement, parameters))

    event.listen(storage.engine, "before_cursor_execute", spy)
    try:
        best_trials(storage, job, top=5, device="pixel3", max_value=max_value)
    finally:
        event.remove(storage.engine, "before_cursor_execute", spy)
    statement, parameters = captured[-1]
    prefix = ("EXPLAIN QUERY PLAN " if storage.dialect == "sqlite"
              else "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ")
    with storage.engine.connect() as conn:
        lines = conn.exec_driver_sql(prefix + statement, parameters).all()
    if storage.dialect == "sqlite":
        return "\n".join(f"    {r[0]:>3} {r[1]:>3} {r[3]}" for r in lines)
    return "\n".join("    " + r[0] for r in lines)


def plan_of(storage: Storage, budget: float | None) -> str:
    """Which index of trial_device_values the query read (informational): `value` = the
    trials within the budget, then the best of them; `score` = down the job's scores,
    checking each value; `trials` = no budget (the trials' score index)."""
    if budget is None:
        return "trials"
    plan = explain(storage, JOB_ID[0], budget)
    for name in ("value", "score"):
        if f"ix_trial_device_values_{name}" in plan:
            return f"{name} index"
    return "other"


def bench_database(label: str, storage: Storage, data: Data, budgets: dict[str, float],
                   repeats: int, show_plans: bool) -> dict[str, list[float]]:
    t0 = time.perf_counter()
    job = fill(storage, data)
    JOB_ID[0] = job
    with storage.engine.connect() as conn:
        counts = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                  for t in ("trials", "architectures", "measurements")}
    print(f"\n[{label}] filled in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{v:,} {k}" for k, v in counts.items()), flush=True)
    found: dict[str, list[float]] = {}
    for name, budget in [("no budget", None), *budgets.items()]:
        times, rows = time_query(storage, job, budget, repeats)
        numbers = [r["number"] for r in rows]
        expected = data.expected(5, budget)
        check = "ok" if numbers == expected else f"WRONG: got {numbers}, expected {expected}"
        if numbers != expected:
            WRONG.append(f"{label} {name}")
        found[name] = times
        limit = "-" if budget is None else f"<= {budget:.2f} ms"
        print(f"  {name:<9} {limit:>12}: median {statistics.median(times):9.2f} ms "
              f"(min {min(times):.2f}, max {max(times):.2f}, n={repeats})  "
              f"{plan_of(storage, budget):<16} answer {check}", flush=True)
        if show_plans and budget is not None:
            print(explain(storage, job, budget))
    return found


def pg_admin():  # noqa: ANN201
    url = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    return create_engine(url, isolation_level="AUTOCOMMIT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test: 10^5 trials")
    parser.add_argument("--trials", type=int, help="stored trials (default 10^6, quick 10^5)")
    parser.add_argument("--repeats", type=int, help="timed repeats per query (default 9)")
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="one database only")
    parser.add_argument("--jobs", type=int, default=1,
                        help="spread the trials over this many jobs (default 1: the worst "
                             "case, every trial in the queried job)")
    args = parser.parse_args()
    n = args.trials or (100_000 if args.quick else 1_000_000)
    repeats = args.repeats or (5 if args.quick else 9)

    t0 = time.perf_counter()
    data = Data(n, jobs=args.jobs)
    value = data.preferred_pixel3()
    known = value[~np.isnan(value) & ~data.failed]
    # tight / medium / loose = the 1st / 50th / 90th percentile of the stored pixel3
    # latencies, with the 5th, 10th and 25th between them (the hard region for one plan)
    budgets = {f"p{q}": float(np.quantile(known, q / 100)) for q in PERCENTILES}
    print(f"{n:,} trials in {args.jobs} job(s), generated in "
          f"{time.perf_counter() - t0:.1f} s; pixel3 budgets "
          "(percentiles of the stored latencies; tight p1, medium p50, loose p90): "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in budgets.items()))

    results: dict[str, dict[str, list[float]]] = {}
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="nas-bench-query-") as tmp:
            storage = Storage(f"sqlite:///{Path(tmp) / 'query.db'}")
            try:
                results["SQLite"] = bench_database("SQLite file", storage, data, budgets,
                                                   repeats, args.explain)
            finally:
                storage.close()
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
            storage = Storage(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{PG_DB}")
            try:
                results["PostgreSQL"] = bench_database("PostgreSQL", storage, data, budgets,
                                                       repeats, args.explain)
            finally:
                storage.close()
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)'))
        admin.dispose()

    print(f"\n=== best_trials(top=5, device='pixel3', max_value=X) over {n:,} trials: "
          "median ms ===")
    names = ["no budget", *budgets]
    print(f"{'database':<12}" + "".join(f"{k:>10}" for k in names))
    worst = 0.0
    for db, found in results.items():
        medians = [statistics.median(found[k]) for k in names]
        worst = max(worst, *medians[1:])
        print(f"{db:<12}" + "".join(f"{v:>10.2f}" for v in medians))
    if "SQLite" in results and "PostgreSQL" in results:
        ratios = [statistics.median(results["PostgreSQL"][k]) /
                  statistics.median(results["SQLite"][k]) for k in names]
        print(f"{'PG/SQLite':<12}" + "".join(f"{r:>9.2f}x" for r in ratios))
    if results:
        verdict = "MET" if worst <= TARGET_MS else "MISSED"
        print(f"\ntarget <= {TARGET_MS:.0f} ms under a budget: {verdict} "
              f"(slowest median {worst:.2f} ms)")
    if WRONG:
        sys.exit(f"wrong answers: {', '.join(WRONG)}")


if __name__ == "__main__":
    main()
