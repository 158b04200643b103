"""Search quality on NAS-Bench-201 CIFAR-10: random search vs regularized evolution.

The honest protocol: every strategy selects on `valid_acc`; we report the `test_acc` of the
trial with the best `valid_acc` seen so far (ties go to the earlier trial, as `nas best`
orders them). Each (strategy, seed) runs once end to end through the real driver
(`api.submit` + `api.run`, executor `local`, parallelism 1, batch size 1, in-memory SQLite)
for the largest budget; smaller budgets are prefixes of that run, because with a window of
one trial the driver's ask/tell sequence depends only on the seed and the results.

    python bench/search_quality.py            # 100 seeds, budgets 100/300/1000
    python bench/search_quality.py --quick    # CI smoke test: 10 seeds, budget 300

Writes search_quality.json and search_quality.png to bench/results/ (`--out` to change;
`--quick` writes to a fresh temporary folder, so it never overwrites the reference figures).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import platform
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas import api  # noqa: E402
from nas.storage import Storage  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TABLE = "nb201-cifar10"
BEST_VALID_INDEX = 6111  # the cell with the highest valid_acc (91.6067), per the data README
STRATEGIES = {
    "random": {},
    "evolution": {"population": 20, "sample": 5},
}


def load_nb201() -> tuple[dict[str, int], dict[str, dict[str, float]]]:
    """(cell string -> NB201 index, cell string -> numeric columns) of the shipped table."""
    data = resources.files("workers").joinpath("data", "nb201-cifar10.csv.gz").read_bytes()
    index: dict[str, int] = {}
    rows: dict[str, dict[str, float]] = {}
    for record in csv.DictReader(gzip.decompress(data).decode().splitlines()):
        index[record["arch"]] = int(record["index"])
        rows[record["arch"]] = {"valid_acc": float(record["valid_acc"]),
                                "test_acc": float(record["test_acc"])}
    return index, rows


def job_spec(strategy: str, seed: int, trials: int) -> dict:
    return {
        "name": f"bench-quality-{strategy}-{seed}",
        "space": "nb201",
        "strategy": strategy,
        "strategy_args": STRATEGIES[strategy],
        "evaluator": "benchmark",
        "evaluator_args": {"table": TABLE},
        "objectives": [{"metric": "valid_acc", "mode": "max"}],
        "budget": {"trials": trials},
        "executor": "local",
        "parallelism": 1,
        "batch_size": 1,
        "snapshot_every": 1000,
        "seed": seed,
    }


def run_once(strategy: str, seed: int, trials: int) -> list[tuple[str, float, float]]:
    """(key, valid_acc, test_acc) of trials 1..`trials` in trial-number order."""
    storage = Storage("sqlite://")
    try:
        job = api.submit(storage, job_spec(strategy, seed, trials))
        status = api.run(storage, job)
        if status != "completed":
            raise RuntimeError(f"{strategy} seed {seed}: job ended {status}")
        rows = storage.load_trials(job)
    finally:
        storage.close()
    if [r["number"] for r in rows] != list(range(1, trials + 1)):
        raise RuntimeError(f"{strategy} seed {seed}: trial numbers are not 1..{trials}")
    out = []
    for row in rows:
        if row["status"] != "completed":
            raise RuntimeError(f"{strategy} seed {seed}: trial {row['number']} {row['status']}")
        out.append((row["key"], row["metrics"]["valid_acc"], row["metrics"]["test_acc"]))
    return out


def incumbent_curve(trials: list[tuple[str, float, float]]) -> tuple[list[float], list[str]]:
    """After each trial: test_acc and key of the best-by-valid_acc trial so far."""
    best_valid = float("-inf")
    best_test, best_key = 0.0, ""
    tests, keys = [], []
    for key, valid, test in trials:
        if valid > best_valid:  # strict: ties keep the earlier trial
            best_valid, best_test, best_key = valid, test, key
        tests.append(best_test)
        keys.append(best_key)
    return tests, keys


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def plot(curves: dict[str, list[list[float]]], budgets: list[int], path: Path,
         reference: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"random": "tab:blue", "evolution": "tab:orange"}
    low = reference
    for strategy, per_seed in curves.items():
        data = np.asarray(per_seed)
        x = np.arange(1, data.shape[1] + 1)
        mean, std = data.mean(axis=0), data.std(axis=0, ddof=1 if len(data) > 1 else 0)
        ax.plot(x, mean, label=f"{strategy} (n={len(data)} seeds)", color=colours[strategy])
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=colours[strategy])
        low = min(low, float((mean - std)[9:].min()))  # what is visible from 10 trials on
    ax.axhline(reference, color="grey", ls="--", lw=1,
               label=f"best-by-valid cell #{BEST_VALID_INDEX} ({reference:.2f})")
    for b in budgets:
        ax.axvline(b, color="lightgrey", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(10, max(budgets))
    ax.set_ylim(low - 0.2, reference + 0.3)
    ax.set_xlabel("trials")
    ax.set_ylabel("test acc. of best-by-valid_acc trial (%)")
    ax.set_title("NAS-Bench-201 CIFAR-10: mean ± std over seeds")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test (< 60 s)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default 100, quick 10)")
    parser.add_argument("--out", type=Path,
                        help="folder for the JSON and PNG (default bench/results; quick: a "
                             "temporary folder)")
    args = parser.parse_args()
    seeds = args.seeds or (10 if args.quick else 100)
    budgets = [100, 300] if args.quick else [100, 300, 1000]
    horizon = max(budgets)

    index_of, table = load_nb201()
    best_key = max(table, key=lambda k: table[k]["valid_acc"])
    assert index_of[best_key] == BEST_VALID_INDEX, "table changed: best-by-valid cell moved"
    reference_test = table[best_key]["test_acc"]
    print(f"NAS-Bench-201 CIFAR-10 ({len(table)} cells): best valid_acc "
          f"{table[best_key]['valid_acc']:.4f} = cell #{BEST_VALID_INDEX}, "
          f"test_acc {reference_test:.4f}; max test_acc "
          f"{max(r['test_acc'] for r in table.values()):.4f}")
    print(f"{seeds} seeds x {len(STRATEGIES)} strategies, {horizon} trials each, "
          "driver end to end (local executor, parallelism 1, batch 1, in-memory SQLite)\n")

    curves: dict[str, list[list[float]]] = {}
    found: dict[str, list[list[bool]]] = {}
    seconds: dict[str, list[float]] = {}
    for strategy in STRATEGIES:
        curves[strategy], found[strategy], seconds[strategy] = [], [], []
        for seed in range(seeds):
            t0 = time.perf_counter()
            trials = run_once(strategy, seed, horizon)
            seconds[strategy].append(time.perf_counter() - t0)
            tests, keys = incumbent_curve(trials)
            curves[strategy].append(tests)
            found[strategy].append([k == best_key for k in keys])
        print(f"  ran {strategy}: {seeds} runs, median {statistics.median(seconds[strategy]):.2f}"
              f" s per {horizon}-trial run", flush=True)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\n{'strategy':<10} {'trials':>6}  {'test_acc mean ± std':>20}  {'median':>7}  "
          f"{'found #' + str(BEST_VALID_INDEX):>12}")
    for strategy in STRATEGIES:
        summary[strategy] = {}
        for b in budgets:
            values = [c[b - 1] for c in curves[strategy]]
            hits = sum(f[b - 1] for f in found[strategy])
            entry = {"mean": statistics.fmean(values), "std": _std(values),
                     "median": statistics.median(values), "min": min(values),
                     "max": max(values), "found_best_valid": hits / seeds,
                     "found_best_valid_count": hits}
            summary[strategy][str(b)] = entry
            print(f"{strategy:<10} {b:>6}  {entry['mean']:>11.2f} ± {entry['std']:<6.2f}  "
                  f"{entry['median']:>7.2f}  {hits:>4}/{seeds:<3} {100 * hits / seeds:>3.0f}%")
    print()
    for b in budgets:
        gap = summary["evolution"][str(b)]["mean"] - summary["random"][str(b)]["mean"]
        print(f"evolution - random at {b:>4} trials: {gap:+.2f} points of test_acc")

    out = args.out or (Path(tempfile.mkdtemp(prefix="nas-bench-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "search_quality.json", out / "search_quality.png"
    record = {
        "benchmark": "nb201-cifar10", "select_on": "valid_acc", "report": "test_acc",
        "seeds": seeds, "budgets": budgets,
        "protocol": "nas driver end to end: executor local, parallelism 1, batch_size 1, "
                    "in-memory SQLite; budgets are prefixes of one run per seed",
        "strategies": STRATEGIES,
        "best_valid_cell": {"index": BEST_VALID_INDEX, "key": best_key,
                            "valid_acc": table[best_key]["valid_acc"],
                            "test_acc": reference_test},
        "results": summary,
        "seconds_per_run_median": {s: statistics.median(v) for s, v in seconds.items()},
        "python": platform.python_version(), "machine": platform.machine(),
    }
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    plot(curves, budgets, png_path, reference_test)
    print(f"\nwrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
