"""Search quality on NAS-Bench-201 CIFAR-10: every strategy (and the GBDT variants) against
random search.

The honest protocol: every strategy selects on `valid_acc`; we report the `test_acc` of the
trial with the best `valid_acc` seen so far (ties go to the earlier trial, as `nas best`
orders them). Each (strategy, seed) runs once end to end through the real driver
(`api.submit` + `api.run`, executor `local`, parallelism 1, batch size 1, in-memory SQLite)
for the largest budget; smaller budgets are prefixes of that run, because with a window of
one trial the driver's ask/tell sequence depends only on the seed and the results.

    python bench/search_quality.py            # 30 seeds, budgets 50/100/300, all variants
    python bench/search_quality.py --seeds 100 --budgets 100,300,1000 --variants random,evolution
    python bench/search_quality.py --quick    # CI smoke test: 4 seeds, budget 100
    python bench/search_quality.py --variants random,evolution,gbdt,tpe,auto --budgets 50,100 \
        --first-seed 100 --name search_quality_auto_confirm   # the held-out seeds 100-129

`auto` scores the whole NB201 space training-free before its first trial. The full mode
loads those scores from bench/.cache (`bench/nb201_proxy_cache.py` computes them once, about
40 ms per cell on one core) into each job's database, as a second job in a shared database
would find them; its time per job is then the search's own. `--quick` (CI, no cache) gives
auto a pool of `QUICK_POOL` sampled cells scored live on a small network instead.
`gbdt+proxies` and `gbdt+proxies+pretrain` (gbdt with auto's proxies as features, and as its
pretraining target) read the same cache; they are not in `--quick`.

Writes search_quality.json and search_quality.png to bench/results/ (`--out` to change;
`--quick` writes to a fresh temporary folder, so it never overwrites the reference figures).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from nas import api  # noqa: E402
from nas.storage import Storage  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TABLE = "nb201-cifar10"
BEST_VALID_INDEX = 6111  # the cell with the highest valid_acc (91.6067), per the data README
#: name -> (registered strategy, strategy_args); settings chosen once on this table, never
#: per seed. Variants whose strategy is not registered are left out.
VARIANTS: dict[str, tuple[str, dict]] = {
    "random": ("random", {}),
    "evolution": ("evolution", {"population": 20, "sample": 5}),
    "gbdt": ("gbdt", {}),
    "gbdt+prune": ("gbdt", {"prune": True}),
    "gbdt+pretrain": ("gbdt", {"pretrain": True}),
    "gbdt+prune+pretrain": ("gbdt", {"prune": True, "pretrain": True}),
    "tpe": ("tpe", {}),
    "auto": ("auto", {"proxies": ["meco", "synflow"],
                      "dataset": "npz:../shared/data/cifar10-test-first20.npz",
                      "proxy_space_args": {"cells_per_stage": 1}}),
}
#: gbdt with auto's proxy scores as features (issue 20), alone and as pretraining target.
VARIANTS["gbdt+proxies"] = ("gbdt", {k: VARIANTS["auto"][1][k]
                                     for k in ("proxies", "dataset", "proxy_space_args")})
VARIANTS["gbdt+proxies+pretrain"] = ("gbdt", {**VARIANTS["gbdt+proxies"][1], "pretrain": True,
                                              "pretrain_target": "proxy"})
QUICK_VARIANTS = ("random", "evolution", "gbdt", "tpe", "auto")
#: --quick: auto's pool (sampled, scored live: CI has no bench/.cache) and scoring network.
QUICK_POOL = 24
QUICK_ARGS = {"auto": {"pool": QUICK_POOL, "proxies": ["synflow"], "ensemble": 3, "trees": 30,
                       "proxy_space_args": {"cells_per_stage": 1, "channels": 8}}}


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


def available_variants(names: list[str]) -> list[str]:
    from nas.strategies import list_strategies

    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    return [n for n in names if VARIANTS[n][0] in list_strategies()]


def variant_args(variant: str, quick: bool) -> dict:
    """The variant's strategy_args (with --quick's overrides)."""
    return {**VARIANTS[variant][1], **(QUICK_ARGS.get(variant, {}) if quick else {})}


def job_spec(variant: str, seed: int, trials: int, quick: bool = False) -> dict:
    strategy, args = VARIANTS[variant][0], variant_args(variant, quick)
    return {
        "name": f"bench-quality-{variant}-{seed}",
        "space": "nb201",
        "strategy": strategy,
        "strategy_args": args,
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


def proxy_cache_rows(variant: str, quick: bool) -> list:
    """The cached pool scores of a proxy-scoring variant (`bench/nb201_proxy_cache.py`) as
    measurement rows under the device its preparation reads (empty without a cache)."""
    import nb201_proxy_cache

    from nas.storage.measurements import MeasurementRow
    from nas.strategies import get_strategy, strategy_class
    from search_spaces import get_space
    from workers.evaluators.proxy import ProxyEvaluator

    strategy_name = VARIANTS[variant][0]
    args = variant_args(variant, quick)
    if "proxies" not in args or quick:
        return []
    space_args = args.get("proxy_space_args", {})
    if space_args != nb201_proxy_cache.SPACE_ARGS or \
            args.get("dataset") != nb201_proxy_cache.SETTINGS["dataset"]:
        return []
    cached = nb201_proxy_cache.load(space_args)
    proxies = [p for p in args["proxies"] if p not in ("params", "flops")]
    strategy = get_strategy(strategy_name, get_space("nb201"), seed=0,
                            **strategy_class(strategy_name).canonical_args(args))
    device = ProxyEvaluator(get_space("nb201", **space_args),
                            **strategy.scorer.evaluator_args).cache_device()
    space = get_space("nb201")
    return [MeasurementRow(key, space.from_key(key), device, p, float(values[p]), "measured")
            for key, values in cached.items() for p in proxies if p in values]


def run_once(strategy: str, seed: int, trials: int, quick: bool = False,
             preload: list | None = None) -> list[tuple[str, float, float]]:
    """(key, valid_acc, test_acc) of trials 1..`trials` in trial-number order; `preload`:
    measurement rows stored before the job (cached proxy scores)."""
    storage = Storage("sqlite://")
    try:
        if preload:
            storage.measurements.put("nb201", preload)
        job = api.submit(storage, job_spec(strategy, seed, trials, quick))
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
        out.append((row.key, row.metrics["valid_acc"], row.metrics["test_acc"]))
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

    fig, ax = plt.subplots(figsize=(8, 5))
    palette = plt.get_cmap("tab10")
    colours = {name: palette(i) for i, name in enumerate(VARIANTS)}
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
    parser.add_argument("--seeds", type=int, help="number of seeds (default 30, quick 4)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + seeds - 1 (default 0; the "
                             "held-out confirmation uses 100)")
    parser.add_argument("--verbose", action="store_true",
                        help="a line per job: test_acc at each budget (* = the best-by-valid "
                             "cell) and its time")
    parser.add_argument("--merge", help="comma-separated JSON files of runs in parallel "
                                            "(other seeds, same variants and budgets): "
                                            "writes their jobs as one table")
    parser.add_argument("--name", default="search_quality",
                        help="stem of the JSON and PNG written (default search_quality)")
    parser.add_argument("--budgets", help="comma-separated trial budgets (default 50,100,300)")
    parser.add_argument("--variants", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path,
                        help="folder for the JSON and PNG (default bench/results; quick: a "
                             "temporary folder)")
    args = parser.parse_args()
    seeds = args.seeds or (4 if args.quick else 30)
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else \
        ([50, 100] if args.quick else [50, 100, 300])
    horizon = max(budgets)
    names = args.variants.split(",") if args.variants else \
        list(QUICK_VARIANTS if args.quick else VARIANTS)
    variants = available_variants(names)

    index_of, table = load_nb201()
    best_key = max(table, key=lambda k: table[k]["valid_acc"])
    assert index_of[best_key] == BEST_VALID_INDEX, "table changed: best-by-valid cell moved"
    reference_test = table[best_key]["test_acc"]
    print(f"NAS-Bench-201 CIFAR-10 ({len(table)} cells): best valid_acc "
          f"{table[best_key]['valid_acc']:.4f} = cell #{BEST_VALID_INDEX}, "
          f"test_acc {reference_test:.4f}; max test_acc "
          f"{max(r['test_acc'] for r in table.values()):.4f}")
    print(f"{seeds} seeds x {len(variants)} variants, {horizon} trials each, "
          "driver end to end (local executor, parallelism 1, batch 1, in-memory SQLite)\n")

    curves: dict[str, list[list[float]]] = {}
    found: dict[str, list[list[bool]]] = {}
    seconds: dict[str, list[float]] = {}
    seed_list = list(range(args.first_seed, args.first_seed + seeds))
    if args.merge:  # parts run in parallel (same budgets): their jobs, one table
        parts = [json.loads(Path(f).read_text()) for f in args.merge.split(",")]
        seed_list = [s for part in parts for s in part["per_seed"]["seeds"]]
        seeds, variants = len(seed_list), list(parts[0]["per_seed"]["curves"])
        for v in variants:
            curves[v] = [c for part in parts for c in part["per_seed"]["curves"][v]]
            found[v] = [f for part in parts for f in part["per_seed"]["found"][v]]
            seconds[v] = [t for part in parts for t in part["per_seed"]["seconds"][v]]
    for strategy in variants if not args.merge else []:
        curves[strategy], found[strategy], seconds[strategy] = [], [], []
        preload = proxy_cache_rows(strategy, args.quick)
        if "proxies" in VARIANTS[strategy][1] and not args.quick:
            if len({r.key for r in preload}) < len(table):
                raise SystemExit(f"{strategy}: the proxy cache holds "
                                 f"{len({r.key for r in preload})} of {len(table)} cells; run "
                                 "bench/nb201_proxy_cache.py first")
            print(f"  {strategy}: {len(preload)} cached proxy scores loaded into each job's "
                  "database", flush=True)
        for seed in seed_list:
            t0 = time.perf_counter()
            trials = run_once(strategy, seed, horizon, args.quick, preload)
            seconds[strategy].append(time.perf_counter() - t0)
            tests, keys = incumbent_curve(trials)
            curves[strategy].append(tests)
            found[strategy].append([k == best_key for k in keys])
            if args.verbose:
                print(f"    {strategy} seed {seed}: " + ", ".join(
                    f"{tests[b - 1]:.2f}{'*' if keys[b - 1] == best_key else ''} at {b}"
                    for b in budgets) + f" ({seconds[strategy][-1]:.1f} s)", flush=True)
        print(f"  ran {strategy}: {seeds} runs, median {statistics.median(seconds[strategy]):.2f}"
              f" s per {horizon}-trial job (range {min(seconds[strategy]):.2f}-"
              f"{max(seconds[strategy]):.2f})", flush=True)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\n{'variant':<20} {'trials':>6}  {'test_acc mean ± std':>20}  {'median':>7}  "
          f"{'found #' + str(BEST_VALID_INDEX):>12}")
    for strategy in variants:
        summary[strategy] = {}
        for b in budgets:
            values = [c[b - 1] for c in curves[strategy]]
            hits = sum(f[b - 1] for f in found[strategy])
            entry = {"mean": statistics.fmean(values), "std": _std(values),
                     "median": statistics.median(values), "min": min(values),
                     "max": max(values), "found_best_valid": hits / seeds,
                     "found_best_valid_count": hits}
            summary[strategy][str(b)] = entry
            print(f"{strategy:<20} {b:>6}  {entry['mean']:>11.2f} ± {entry['std']:<6.2f}  "
                  f"{entry['median']:>7.2f}  {hits:>4}/{seeds:<3} {100 * hits / seeds:>3.0f}%")
    print()
    if "random" in summary:
        for strategy in (v for v in variants if v != "random"):
            gaps = [summary[strategy][str(b)]["mean"] - summary["random"][str(b)]["mean"]
                    for b in budgets]
            print(f"{strategy} - random: " + ", ".join(
                f"{g:+.2f} at {b}" for g, b in zip(gaps, budgets, strict=True)))

    out = args.out or (Path(tempfile.mkdtemp(prefix="nas-bench-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{args.name}.json", out / f"{args.name}.png"
    record = {
        "benchmark": "nb201-cifar10", "select_on": "valid_acc", "report": "test_acc",
        "seeds": seeds, "first_seed": seed_list[0], "budgets": budgets,
        "protocol": "nas driver end to end: executor local, parallelism 1, batch_size 1, "
                    "in-memory SQLite; budgets are prefixes of one run per seed",
        "variants": {v: {"strategy": VARIANTS[v][0],
                         "strategy_args": variant_args(v, args.quick)} for v in variants},
        "best_valid_cell": {"index": BEST_VALID_INDEX, "key": best_key,
                            "valid_acc": table[best_key]["valid_acc"],
                            "test_acc": reference_test},
        "results": summary,
        "per_seed": {"seeds": seed_list, "curves": curves, "found": found,
                     "seconds": seconds},
        "seconds_per_run_median": {s: statistics.median(v) for s, v in seconds.items()},
        "seconds_per_run_range": {s: [min(v), max(v)] for s, v in seconds.items()},
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(), "machine": platform.machine(),
    }
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    plot(curves, budgets, png_path, reference_test)
    print(f"\nwrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
