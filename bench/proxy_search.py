"""The `proxy` strategy on NAS-Bench-201 CIFAR-10: training-free scoring of the whole space
through the service, then searches with 10 and 100 real evaluations.

1. Scoring (`--score`): one job whose `proxy` strategy pool is the whole space (15,625 cells)
   scores every cell with the default battery (synflow, jacov, params; the 20 CIFAR-10
   images of ../shared/data) on a reduced network (`proxy_space_args`: one cell per stage),
   on a local Ray with 2 workers, storing each score in the job's database as it arrives.
   Prints the throughput and writes the scores to bench/results/proxy_scores_nb201.csv.gz.
2. Search: for each seed (30) and N in (10, 100), a job with strategy `proxy` (pool: 1,000
   random cells of the seed, mode `top`, and mode `evolution` = proxy-warm-started
   evolution) and the `benchmark` evaluator selecting on valid_acc, in a database whose
   proxy cache holds the scores of step 1 (imported, as `measurements.put` would store them
   from an earlier job), so only the N real evaluations run. Reports the test_acc of the
   best-by-valid_acc trial: mean +- std over seeds, next to NASWOT-style selection without
   any evaluation (the proxy-best of N random cells; NASWOT reports 91.6 +- 1.7 at N=10)
   and random search with N evaluations.

    python bench/proxy_search.py --score     # step 1 (tens of minutes), then step 2
    python bench/proxy_search.py             # step 2 from the stored scores (step 1
                                             # first when they are missing)
    python bench/proxy_search.py --quick     # CI smoke test: 60 cells scored live, 4 seeds
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.proxies import IMAGES, images_present  # noqa: E402
from nas import api  # noqa: E402
from nas.storage import MeasurementRow, Storage  # noqa: E402
from search_spaces import NB201Space  # noqa: E402
from workers.evaluators.proxy import DEFAULT_PROXIES, ProxyEvaluator  # noqa: E402
from workers.tables import load_table  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SCORES = RESULTS / "proxy_scores_nb201.csv.gz"
PROXY_SPACE_ARGS = {"cells_per_stage": 1}
STORED = [p for p in DEFAULT_PROXIES if p not in ("params", "flops")]


def strategy_args(pool: int, mode: str) -> dict:
    return {"pool": pool, "mode": mode, "dataset": f"npz:{IMAGES}",
            "proxy_space_args": PROXY_SPACE_ARGS}


def job_spec(name: str, strategy: dict, trials: int, seed: int, executor: str = "local",
             parallelism: int = 1) -> dict:
    return {"name": name, "space": "nb201", "strategy": "proxy", "strategy_args": strategy,
            "evaluator": "benchmark", "evaluator_args": {"table": "nb201-cifar10"},
            "objectives": [{"metric": "valid_acc", "mode": "max"}],
            "budget": {"trials": trials}, "executor": executor, "parallelism": parallelism,
            "batch_size": 1, "seed": seed}


def cache_device() -> str:
    space = NB201Space(**PROXY_SPACE_ARGS)
    return ProxyEvaluator(space, dataset=f"npz:{IMAGES}").cache_device()


# ---- step 1: score the whole space through the service --------------------------------------
def score_space(storage: Storage, pool: int, workers: int) -> dict:
    spec = job_spec("bench-proxy-score", strategy_args(pool, "top"), 1, 0, "ray", workers)
    job = api.submit(storage, spec)
    start = time.perf_counter()
    assert api.run(storage, job) == "completed"
    seconds = time.perf_counter() - start
    scores = stored_scores(storage)
    print(f"scored {len(scores):,} cells with {', '.join(DEFAULT_PROXIES)} on "
          f"{workers} Ray workers in {seconds / 60:.1f} min: {len(scores) / seconds:.1f} "
          f"cells/s ({seconds / max(1, len(scores)) * workers:.3f} s per cell per worker)",
          flush=True)
    return {"cells": len(scores), "seconds": seconds, "workers": workers,
            "cells_per_s": len(scores) / seconds}


def stored_scores(storage: Storage) -> dict[str, dict[str, float]]:
    from nas.storage import stored_values

    keys = [NB201Space().key(a) for a in NB201Space().enumerate()]
    return {k: v for k, v in stored_values(storage, "nb201", keys, cache_device()).items()
            if all(p in v for p in STORED)}


def write_scores(scores: dict[str, dict[str, float]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["arch", *STORED])
    for key in sorted(scores):
        writer.writerow([key, *(repr(scores[key][p]) for p in STORED)])
    path.write_bytes(gzip.compress(buffer.getvalue().encode(), mtime=0))


def read_scores(path: Path) -> dict[str, dict[str, float]]:
    rows = csv.DictReader(gzip.decompress(path.read_bytes()).decode().splitlines())
    return {r["arch"]: {p: float(r[p]) for p in STORED} for r in rows}


def fill_cache(storage: Storage, scores: dict[str, dict[str, float]]) -> None:
    space, device = NB201Space(), cache_device()
    storage.measurements.put("nb201", [
        MeasurementRow(key, space.from_key(key), device, proxy, value, "measured")
        for key, values in scores.items() for proxy, value in values.items()])


# ---- step 2: searches ------------------------------------------------------------------------
def best_by_valid(storage: Storage, job: int, table) -> float:
    trials = [t for t in storage.trials.load(job) if t.status == "completed"]
    best = max(trials, key=lambda t: (t.metrics["valid_acc"], -t.number))
    return table.rows[best.key]["test_acc"]


def naswot_style(scores: dict[str, dict[str, float]], n: int, seed: int, table) -> float:
    """No evaluation at all: the proxy-best (rank voting within the sample) of n random
    cells, as NASWOT selects."""
    from predictors.combine import mean_rank

    space = NB201Space()
    rng = np.random.default_rng(seed)
    scored = sorted(scores)  # the whole space after --score: uniform random cells
    keys = [scored[int(i)] for i in rng.choice(len(scored), size=min(n, len(scored)),
                                                 replace=False)]
    values = {p: [scores[k][p] if p in scores[k] else float(space.params(space.from_key(k)))
                  for k in keys] for p in DEFAULT_PROXIES}
    return table.rows[keys[int(np.argmax(mean_rank(values)))]]["test_acc"]


def random_search(n: int, seed: int, table) -> float:
    space = NB201Space()
    rng = np.random.default_rng(seed + 10_000)
    keys = list(dict.fromkeys(space.key(space.sample(rng)) for _ in range(4 * n)))[:n]
    return table.rows[max(keys, key=lambda k: table.rows[k]["valid_acc"])]["test_acc"]


def searches(scores: dict[str, dict[str, float]], seeds: int, budgets: list[int], pool: int,
             table) -> dict:
    storage = Storage("sqlite://")
    fill_cache(storage, scores)
    out: dict[str, dict[str, list[float]]] = {}
    for n in budgets:
        for mode in ("top", "evolution"):
            name = f"proxy-{mode}"
            values = []
            for seed in range(seeds):
                job = api.submit(storage, job_spec(f"{name}-{n}-{seed}",
                                                   strategy_args(pool, mode), n, seed))
                assert api.run(storage, job) == "completed"
                values.append(best_by_valid(storage, job, table))
            out.setdefault(name, {})[str(n)] = values
        out.setdefault("naswot-style (no evaluation)", {})[str(n)] = [
            naswot_style(scores, n, seed, table) for seed in range(seeds)]
        out.setdefault("random search", {})[str(n)] = [
            random_search(n, seed, table) for seed in range(seeds)]
    storage.close()
    return out


def report(results: dict, budgets: list[int]) -> dict:
    summary = {}
    print(f"\n{'method':<30}" + "".join(f"{'N=' + str(n):>18}" for n in budgets))
    for method, per_budget in results.items():
        summary[method] = {n: {"mean": statistics.fmean(v), "std": statistics.pstdev(v),
                               "seeds": len(v)} for n, v in per_budget.items()}
        print(f"{method:<30}" + "".join(
            f"{summary[method][str(n)]['mean']:>11.2f} ± {summary[method][str(n)]['std']:<4.2f}"
            for n in budgets))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test")
    parser.add_argument("--score", action="store_true", help="score the whole space first")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--pool", type=int, default=1000)
    args = parser.parse_args()
    if not images_present():
        return
    table = load_table("nb201-cifar10")
    budgets = [10, 100]
    record: dict = {"proxies": list(DEFAULT_PROXIES), "proxy_space_args": PROXY_SPACE_ARGS,
                    "data": "cifar10-test-first20 (20 images)"}
    if args.quick:
        with tempfile.TemporaryDirectory() as folder:
            storage = Storage(f"sqlite:///{folder}/quick.db")
            record["scoring"] = score_space(storage, 60, args.workers)
            scores = stored_scores(storage)
            storage.close()
        assert len(scores) == 60, len(scores)
        results = searches(scores, 4, [10], 20, table)
        report(results, [10])
        return
    if args.score or not SCORES.is_file():  # the scores are a cache, not kept in git
        with tempfile.TemporaryDirectory() as folder:
            storage = Storage(f"sqlite:///{folder}/scores.db")
            record["scoring"] = score_space(storage, 15_625, args.workers)
            write_scores(stored_scores(storage), SCORES)
            storage.close()
    scores = read_scores(SCORES)
    print(f"{len(scores):,} cells with stored scores ({SCORES.name})")
    results = searches(scores, args.seeds, budgets, args.pool, table)
    record["results"] = report(results, budgets)
    record["seeds"], record["pool"] = args.seeds, args.pool
    path = RESULTS / "proxy_search.json"
    if path.exists() and "scoring" not in record:
        record["scoring"] = json.loads(path.read_text()).get("scoring")
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
