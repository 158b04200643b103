"""Multi-objective search on NAS-Bench-201 CIFAR-10 x HW-NAS-Bench: valid_acc (max) vs
latency_ms on edgegpu (NVIDIA Jetson TX2, min).

Measure: the hypervolume of the Pareto front of the trials found so far, divided by the
hypervolume of the true front of the table (every cell with both a valid_acc and an edgegpu
latency: 12,554 of the 15,625). A trial without a latency (no row in HW-NAS-Bench) is on no
front. Reference point: the worst valid_acc and the worst edgegpu latency of those cells, so
every cell of the table lies inside the reference box and nothing is tuned to the
strategies. It makes the ratio saturate (one good fast cell covers most of the box), so the
gap 1 - ratio is reported too, as is the number of true-front cells found (no reference
point at all).

Each (strategy, seed) runs once end to end through the real driver (`api.submit` +
`api.run`, executor `local`, parallelism 1, batch size 1, in-memory SQLite) for the largest
budget; smaller budgets are prefixes of that run (with a window of one trial the ask/tell
sequence depends only on the seed and the results). `nsga2` joins `random` and `moevo` when
it is registered.

    python bench/multi_objective.py            # 50 seeds, budgets 100/300
    python bench/multi_objective.py --quick    # CI smoke test: 5 seeds, budget 100, < 60 s

(--quick checks that the pipeline runs; 5 seeds at 100 trials are too few to rank strategies:
at 100 trials moevo is above random on about 4 seeds in 5.)

Writes multi_objective.json and multi_objective.png to bench/results/ (`--out` to change;
`--quick` writes to a fresh temporary folder, so it never overwrites the reference figures).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nas.strategies.moevo  # noqa: E402, F401  (registers moevo)
from nas import api  # noqa: E402
from nas.pareto import hypervolume, pareto_mask, table_costs  # noqa: E402
from nas.storage import Storage  # noqa: E402
from nas.strategies import list_strategies  # noqa: E402
from workers.tables import load_table  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ACC_TABLE, LATENCY_TABLE, DEVICE = "nb201-cifar10", "hw-nas-bench-cifar10", "edgegpu"
OBJECTIVES = [{"metric": "valid_acc", "mode": "max"},
              {"metric": "latency_ms", "device": DEVICE, "mode": "min"}]
CANDIDATES = {
    "random": {},
    "moevo": {"population": 30, "sample": 5},
    "nsga2": {},
}
COLOURS = {"random": "tab:blue", "moevo": "tab:orange", "nsga2": "tab:green"}


def strategies() -> dict[str, dict]:
    """The candidates registered in this process (nsga2 may not exist yet)."""
    known = set(list_strategies())
    return {name: args for name, args in CANDIDATES.items() if name in known}


class TrueFront:
    """The table's cells with both objectives, as costs (-valid_acc, latency), its true
    Pareto front and the reference point (the worst cell value of each objective)."""

    def __init__(self) -> None:
        accuracy = load_table(ACC_TABLE).rows
        latency = load_table(LATENCY_TABLE).rows
        column = f"{DEVICE}_latency_ms"
        rows = {key: {"valid_acc": row["valid_acc"], "latency_ms": latency[key][column]}
                for key, row in accuracy.items()
                if "valid_acc" in row and column in latency.get(key, {})}
        keys, costs = table_costs(rows, [("valid_acc", "max"), ("latency_ms", "min")])
        mask = pareto_mask(costs)
        order = np.argsort(costs[mask, 1])
        self.cells = len(keys)
        self.keys = [k for k, m in zip(keys, mask, strict=True) if m]
        self.keys = [self.keys[i] for i in order]
        self.costs = costs[mask][order]
        self.reference = costs.max(axis=0)
        self.hypervolume = hypervolume(self.costs, self.reference)

    def describe(self) -> dict:
        return {
            "cells": self.cells, "size": len(self.keys), "hypervolume": self.hypervolume,
            "reference": {"valid_acc": -float(self.reference[0]),
                          "latency_ms": float(self.reference[1])},
            "front": [{"key": k, "valid_acc": -float(c[0]), "latency_ms": float(c[1])}
                      for k, c in zip(self.keys, self.costs, strict=True)],
        }


def job_spec(strategy: str, args: dict, seed: int, trials: int) -> dict:
    return {
        "name": f"bench-multi-objective-{strategy}-{seed}",
        "space": "nb201",
        "strategy": strategy,
        "strategy_args": args,
        "evaluator": "benchmark",
        "evaluator_args": {"table": ACC_TABLE, "latency_table": LATENCY_TABLE},
        "objectives": OBJECTIVES,
        "budget": {"trials": trials},
        "executor": "local",
        "parallelism": 1,
        "batch_size": 1,
        "snapshot_every": 1000,
        "seed": seed,
    }


def run_once(strategy: str, args: dict, seed: int,
             trials: int) -> list[tuple[str, float, float | None]]:
    """(key, valid_acc, edgegpu latency or None) of trials 1..`trials`, in order."""
    storage = Storage("sqlite://")
    try:
        job = api.submit(storage, job_spec(strategy, args, seed, trials))
        status = api.run(storage, job)
        if status != "completed":
            raise RuntimeError(f"{strategy} seed {seed}: job ended {status}")
        rows = storage.trials.load(job)
    finally:
        storage.close()
    if [r.number for r in rows] != list(range(1, trials + 1)):
        raise RuntimeError(f"{strategy} seed {seed}: trial numbers are not 1..{trials}")
    out = []
    for row in rows:
        if row.status != "completed":
            raise RuntimeError(f"{strategy} seed {seed}: trial {row.number} {row.status}")
        valid_acc, latency = row.objectives
        out.append((row.key, float(valid_acc), None if latency is None else float(latency)))
    return out


def hv_curve(trials: list[tuple[str, float, float | None]],
             truth: TrueFront) -> tuple[list[float], list[int]]:
    """After each trial: HV ratio of the front found so far, and true-front cells found."""
    front = np.empty((0, 2))
    targets = set(truth.keys)
    ratio, found, ratios, hits = 0.0, 0, [], []
    for key, valid_acc, latency in trials:
        if latency is not None:
            point = np.array([-valid_acc, latency])
            dominated = np.any(np.all(front <= point, axis=1) & np.any(front < point, axis=1))
            if not dominated:
                keep = ~(np.all(point <= front, axis=1) & np.any(point < front, axis=1))
                front = np.vstack([front[keep], point])
                ratio = hypervolume(front, truth.reference) / truth.hypervolume
        found += key in targets
        ratios.append(ratio)
        hits.append(found)
    return ratios, hits


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return float(q25), float(median), float(q75)


def summarise(ratios: list[list[float]], hits: list[list[int]], budget: int) -> dict:
    values = [r[budget - 1] for r in ratios]
    q25, median, q75 = _quartiles(values)
    gaps = [1.0 - v for v in values]
    found = [h[budget - 1] for h in hits]
    return {"hv_ratio": {"median": median, "q25": q25, "q75": q75,
                         "mean": statistics.fmean(values), "min": min(values),
                         "max": max(values)},
            "hv_gap_median": float(np.median(gaps)),
            "true_front_found": {"median": float(np.median(found)),
                                 "mean": statistics.fmean(found)}}


def plot(ratios: dict[str, list[list[float]]], budgets: list[int], path: Path,
         truth: TrueFront) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7.5), sharex=True)
    for strategy, per_seed in ratios.items():
        data = np.asarray(per_seed)
        x = np.arange(1, data.shape[1] + 1)
        q25, median, q75 = np.percentile(data, [25, 50, 75], axis=0)
        colour = COLOURS.get(strategy)
        label = f"{strategy} (n={len(data)} seeds)"
        top.plot(x, median, color=colour, label=label)
        top.fill_between(x, q25, q75, color=colour, alpha=0.2)
        bottom.plot(x, 1 - median, color=colour, label=label)
        bottom.fill_between(x, 1 - q75, 1 - q25, color=colour, alpha=0.2)
    for ax in (top, bottom):
        for b in budgets:
            ax.axvline(b, color="lightgrey", lw=0.8, zorder=0)
        ax.grid(alpha=0.3)
    top.set_xlim(10, max(budgets))
    top.set_ylim(0.9, 1.0)
    top.set_ylabel("HV / HV(true front)")
    ref = truth.reference
    top.set_title(f"NB201 CIFAR-10 valid_acc vs {DEVICE} latency: median and IQR\n"
                  f"reference ({-ref[0]:.2f}% valid_acc, {ref[1]:.2f} ms); true front "
                  f"{len(truth.keys)} of {truth.cells} cells", fontsize=10)
    top.legend(loc="lower right")
    bottom.set_yscale("log")
    bottom.set_ylabel("1 - HV ratio (log)")
    bottom.set_xlabel("trials")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test (< 60 s)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default 50, quick 5)")
    parser.add_argument("--out", type=Path,
                        help="folder for the JSON and PNG (default bench/results; quick: a "
                             "temporary folder)")
    args = parser.parse_args()
    seeds = args.seeds or (5 if args.quick else 50)
    budgets = [100] if args.quick else [100, 300]
    horizon = max(budgets)
    chosen = strategies()

    truth = TrueFront()
    ref = truth.reference
    print(f"{truth.cells} cells with valid_acc and {DEVICE} latency; true front: "
          f"{len(truth.keys)} cells; reference point ({-ref[0]:.3f}% valid_acc, "
          f"{ref[1]:.3f} ms); true hypervolume {truth.hypervolume:.3f}")
    print(f"{seeds} seeds x {len(chosen)} strategies ({', '.join(chosen)}), {horizon} trials "
          "each, driver end to end (local executor, parallelism 1, batch 1, in-memory "
          "SQLite)\n")

    ratios: dict[str, list[list[float]]] = {}
    hits: dict[str, list[list[int]]] = {}
    seconds: dict[str, list[float]] = {}
    for strategy, strategy_args in chosen.items():
        ratios[strategy], hits[strategy], seconds[strategy] = [], [], []
        for seed in range(seeds):
            t0 = time.perf_counter()
            trials = run_once(strategy, strategy_args, seed, horizon)
            seconds[strategy].append(time.perf_counter() - t0)
            curve, found = hv_curve(trials, truth)
            ratios[strategy].append(curve)
            hits[strategy].append(found)
        print(f"  ran {strategy}: {seeds} runs, median {statistics.median(seconds[strategy]):.2f}"
              f" s per {horizon}-trial run", flush=True)

    summary: dict[str, dict[str, dict]] = {}
    print(f"\n{'strategy':<8} {'trials':>6}  {'HV ratio median [IQR]':>28}  {'1 - median':>10}  "
          f"{'front cells found':>17}")
    for strategy in chosen:
        summary[strategy] = {}
        for b in budgets:
            entry = summarise(ratios[strategy], hits[strategy], b)
            summary[strategy][str(b)] = entry
            hv = entry["hv_ratio"]
            print(f"{strategy:<8} {b:>6}  {hv['median']:>8.4f} [{hv['q25']:.4f}, "
                  f"{hv['q75']:.4f}]  {entry['hv_gap_median']:>10.4f}  "
                  f"{entry['true_front_found']['median']:>9.1f} of {len(truth.keys)}")
    paired: dict[str, dict[str, dict[str, int]]] = {}
    for other in (s for s in chosen if s != "moevo"):
        paired[other] = {}
        for b in budgets:
            pairs = [(m[b - 1], o[b - 1]) for m, o in
                     zip(ratios["moevo"], ratios[other], strict=True)]
            wins = sum(m > o for m, o in pairs)
            ties = sum(m == o for m, o in pairs)
            paired[other][str(b)] = {"above": wins, "tied": ties, "below": seeds - wins - ties}
            print(f"moevo vs {other} at {b} trials, same seed: above on {wins}, tied on "
                  f"{ties}, below on {seeds - wins - ties} of {seeds} seeds")

    out = args.out or (Path(tempfile.mkdtemp(prefix="nas-bench-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "multi_objective.json", out / "multi_objective.png"
    record = {
        "benchmark": f"{ACC_TABLE} x {LATENCY_TABLE}", "objectives": OBJECTIVES,
        "seeds": seeds, "budgets": budgets,
        "protocol": "nas driver end to end: executor local, parallelism 1, batch_size 1, "
                    "in-memory SQLite; budgets are prefixes of one run per seed",
        "measure": "hypervolume of the found front / hypervolume of the true front, both "
                   "with the reference point; trials without a latency are on no front",
        "strategies": chosen,
        "true_front": truth.describe(),
        "results": summary,
        "moevo_vs_other_per_seed": paired,
        "seconds_per_run_median": {s: statistics.median(v) for s, v in seconds.items()},
        "python": platform.python_version(), "machine": platform.machine(),
    }
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    plot(ratios, budgets, png_path, truth)
    print(f"\nwrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
