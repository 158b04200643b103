"""Cheap-trial throughput on a multi-node Ray cluster on this machine (1 node vs 2 nodes), and
nas's per-trial overhead against plain Ray tasks doing the same table look-ups.

How to read the figures. Each configuration is a fresh `ray.cluster_utils.Cluster` (every node
its own raylet and object store, as `ray start` would run it) with the same total CPUs, the
machine's 2 cores: "1 node x 2 CPUs" and "2 nodes x 1 CPU". This process is the driver,
connected to the head as `--ray-address` would connect it. Per repeat and configuration:

* nas: `api.submit` + `api.run` of a random-search job over NB201 (`benchmark` evaluator on
  the CIFAR-10 table, no latency table), parallelism 2, the driver's default batch for cheap
  trials (CHEAP_BATCH trials per Ray task), every trial stored in a SQLite file.
* plain Ray: the same architectures looked up in the same table by bare Ray tasks (same batch
  size, same 2 batches in flight, same scheduling strategy as the executor), nothing stored.

`trials/s` is trials over wall time; `overhead` is nas ms/trial minus plain Ray ms/trial of
the same repeat: what the driver, the storage and the evaluator wrapper add per trial. A
look-up costs microseconds, so both rows measure framework overhead, not work; on 2 cores a
second node adds processes (a raylet, cross-node calls), not cores, so "2 nodes" shows the
cost of spreading, not a speed-up. Figures are medians over repeats (min-max in brackets);
cluster start-up and warm-up (worker processes start and load the table) are not counted.
`nodes used` is the number of trials per node in the last nas repeat.

    python bench/cluster.py            # 2,000 trials x 5 repeats; writes bench/results/cluster.json
    python bench/cluster.py --quick    # CI smoke test (about a minute; writes to a temp folder)
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from nas import api  # noqa: E402
from nas.driver import CHEAP_BATCH  # noqa: E402
from nas.storage import Storage  # noqa: E402
from workers.tables import load_table  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TABLE = "nb201-cifar10"
PARALLELISM = 2
CONFIGS = (("1 node x 2 CPUs", 1, 2), ("2 nodes x 1 CPU", 2, 1))
NODE_MEMORY = 100 * 2**20  # object store per node: results are small


# ---- the cluster --------------------------------------------------------------------------------
def start_cluster(nodes: int, cpus: int, temp_dir: str) -> Any:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus, "object_store_memory": NODE_MEMORY, "include_dashboard": False,
        "temp_dir": temp_dir})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus, object_store_memory=NODE_MEMORY)
    cluster.wait_for_nodes()
    return cluster


# ---- nas ----------------------------------------------------------------------------------------
def nas_spec(trials: int, seed: int, batch_size: int | None = None) -> dict:
    spec = {
        "name": "bench-cluster", "space": "nb201", "strategy": "random",
        "evaluator": "benchmark", "evaluator_args": {"table": TABLE},
        "objectives": [{"metric": "valid_acc", "mode": "max"}],
        "budget": {"trials": trials}, "executor": "ray", "parallelism": PARALLELISM,
        "seed": seed,
    }
    if batch_size is not None:
        spec["batch_size"] = batch_size
    return spec


def run_nas(folder: Path, address: str, spec: dict) -> tuple[float, list[str], dict[str, int]]:
    """Seconds of `submit` + `run`, the trials' keys in order and the trials per node."""
    from sqlalchemy import select

    from nas.storage.schema import trials as trials_table

    storage = Storage(f"sqlite:///{folder / f'nas-{time.monotonic_ns()}.db'}")
    try:
        t0 = time.perf_counter()
        job = api.submit(storage, spec)
        status = api.run(storage, job, ray_address=address)
        seconds = time.perf_counter() - t0
        keys = [row.key for row in storage.trials.load(job)]
        with storage.engine.connect() as conn:
            workers = conn.execute(select(trials_table.c.worker).where(
                trials_table.c.job_id == job)).scalars().all()
        counts = storage.trials.counts(job)
    finally:
        storage.close()
    budget = spec["budget"]["trials"]
    if status != "completed" or counts.get("completed") != budget:
        raise RuntimeError(f"nas job ended {status} with {counts}")
    nodes = collections.Counter(w.rpartition("node=")[2] or "?" for w in workers)
    return seconds, keys, dict(sorted(nodes.items()))


# ---- plain Ray ----------------------------------------------------------------------------------
def lookup(keys: list[str]) -> list[dict[str, float]]:
    """A bare Ray task: the table rows of a batch of architectures."""
    rows = load_table(TABLE).rows
    return [dict(rows[key]) for key in keys]


def run_plain(ray: Any, remote: Any, keys: list[str], batch: int) -> float:
    """Seconds to look `keys` up in batches, PARALLELISM batches in flight (as nas keeps)."""
    batches = [keys[i:i + batch] for i in range(0, len(keys), batch)]
    pending: list[Any] = []
    done = 0
    t0 = time.perf_counter()
    for chunk in batches:
        if len(pending) >= PARALLELISM:
            ready, pending = ray.wait(pending, num_returns=1)
            done += sum(len(rows) for rows in ray.get(ready))
        pending.append(remote.remote(chunk))
    done += sum(len(rows) for rows in ray.get(pending))
    seconds = time.perf_counter() - t0
    if done != len(keys):
        raise RuntimeError(f"plain Ray looked up {done} of {len(keys)} architectures")
    return seconds


# ---- one configuration --------------------------------------------------------------------------
def bench_config(nodes: int, cpus: int, trials: int, repeats: int, folder: Path) -> dict:
    from workers.executors import connect_ray
    from workers.executors.ray import batch_scheduling

    temp_dir = tempfile.mkdtemp(prefix="nas-ray-bench-")
    t0 = time.perf_counter()
    cluster = start_cluster(nodes, cpus, temp_dir)
    try:
        ray = connect_ray(cluster.address)
        started_s = time.perf_counter() - t0
        scheduling = batch_scheduling(ray)
        remote = ray.remote(num_cpus=1, max_retries=0, scheduling_strategy=scheduling)(lookup)
        # warm-up: the worker processes of every node start, import and load the table
        t0 = time.perf_counter()
        _, warm_keys, _ = run_nas(folder, cluster.address, nas_spec(64, 998, batch_size=8))
        run_plain(ray, remote, warm_keys, CHEAP_BATCH)
        warm_s = time.perf_counter() - t0
        nas_ms, plain_ms, nodes_used = [], [], {}
        for r in range(repeats):
            seconds, keys, nodes_used = run_nas(folder, cluster.address, nas_spec(trials, r))
            nas_ms.append(1000.0 * seconds / trials)
            plain_ms.append(1000.0 * run_plain(ray, remote, keys, CHEAP_BATCH) / trials)
        ray.shutdown()
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    overhead = [n - p for n, p in zip(nas_ms, plain_ms, strict=True)]
    return {
        "nodes": nodes, "cpus_per_node": cpus, "scheduling": scheduling,
        "cluster_start_s": started_s, "warm_up_s": warm_s,
        "nas_ms_per_trial": nas_ms, "plain_ray_ms_per_trial": plain_ms,
        "overhead_ms_per_trial": overhead,
        "nas_trials_per_s": 1000.0 / statistics.median(nas_ms),
        "plain_ray_trials_per_s": 1000.0 / statistics.median(plain_ms),
        "nas_trials_per_node_last_repeat": nodes_used,
    }


# ---- report -------------------------------------------------------------------------------------
def _fmt(values: list[float]) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:6.2f}"
    return f"{median:6.2f} [{min(values):.2f}-{max(values):.2f}]"


def report(results: dict[str, dict], repeats: int) -> None:
    print(f"\n=== cheap trials, parallelism {PARALLELISM}, batch {CHEAP_BATCH}: "
          f"median over {repeats} repeat(s) ===")
    print(f"{'':<18} {'nas trials/s':>12} {'plain trials/s':>14}   {'nas ms/trial':<20} "
          f"{'plain ms/trial':<20} {'overhead ms/trial':<20} nodes used")
    for label, row in results.items():
        print(f"{label:<18} {row['nas_trials_per_s']:12.0f} {row['plain_ray_trials_per_s']:14.0f}"
              f"   {_fmt(row['nas_ms_per_trial']):<20} {_fmt(row['plain_ray_ms_per_trial']):<20} "
              f"{_fmt(row['overhead_ms_per_trial']):<20} {row['nas_trials_per_node_last_repeat']}")
    one, two = (results[label] for label, _, _ in CONFIGS)
    print(f"\n2 nodes / 1 node throughput: nas "
          f"{two['nas_trials_per_s'] / one['nas_trials_per_s']:.2f}x, plain Ray "
          f"{two['plain_ray_trials_per_s'] / one['plain_ray_trials_per_s']:.2f}x "
          "(same 2 CPUs in total)")
    for label, row in results.items():
        print(f"{label}: cluster start {row['cluster_start_s']:.1f} s, warm-up "
              f"{row['warm_up_s']:.1f} s, scheduling {row['scheduling']} (not per trial)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test (about a minute)")
    parser.add_argument("--repeats", type=int, help="repeats per figure (default 5, quick 2)")
    parser.add_argument("--trials", type=int, help="trials per job (default 2000, quick 300)")
    parser.add_argument("--out", type=Path, help="folder for the JSON (default bench/results; "
                                                 "quick: a temporary folder)")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    trials = args.trials or (300 if args.quick else 2000)
    logging.getLogger("ray").setLevel(logging.ERROR)
    import ray

    ray.shutdown()
    load_table(TABLE)
    load_before = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs; Ray {ray.__version__}; {repeats} repeat(s) of {trials} "
          f"trials per configuration; load average {load_before:.1f}", flush=True)
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="nas-bench-cluster-") as tmp:
        for label, nodes, cpus in CONFIGS:
            results[label] = bench_config(nodes, cpus, trials, repeats, Path(tmp))
            print(f"{label} done", flush=True)
    report(results, repeats)
    load_after = os.getloadavg()[0]
    print(f"load average (1 min) before {load_before:.1f}, after {load_after:.1f}: other "
          "processes on this machine slow every row alike")
    out = args.out or (Path(tempfile.mkdtemp(prefix="nas-bench-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "cheap-trial throughput on a local multi-node Ray cluster; nas vs plain "
                     "Ray tasks doing the same table look-ups",
        "settings": {"trials": trials, "repeats": repeats, "parallelism": PARALLELISM,
                     "batch_size": CHEAP_BATCH, "table": TABLE, "storage": "SQLite file"},
        "results": results, "seconds": time.perf_counter() - started,
        "ray": ray.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        "machine": platform.machine(), "load_avg_1min": [load_before, load_after],
    }
    path = out / "cluster.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\ntotal {record['seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
