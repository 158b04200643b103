"""Training-free proxies on NAS-Bench-201 CIFAR-10: rank correlation with the trained
accuracy, next to the published figures and NASLib's reference scores; combined scores;
throughput.

The network is the default NB201 one (16 channels, 5 cells per stage) as in the papers; the
minibatch is the 20 CIFAR-10 test images of `../shared/data/cifar10-test-first20.npz`,
through the `proxy` evaluator (`workers/evaluators/proxy.py`), so the bench measures what a
search gets. The sample is fixed: NASLib's 724 reference cells first (so that each proxy can
be compared with NASLib's implementation of it), then other cells in a seeded order.

Per-cell scores are cached in `bench/results/proxies_cells.jsonl` (one line per cell and
data setting; a rerun computes only what is missing). `--quick` (CI) scores 60 cells with a
cheap subset, without the cache, and writes nothing unless `--json` is given.

    python bench/proxies.py --workers 2                  # 1,000 cells, every proxy
    python bench/proxies.py --cells 1000 --proxies synflow nwot   # fill in some proxies
    python bench/proxies.py --quick
    python bench/proxies.py --cells 200 --json bench/results/proxies_recent.json --time-cells 0

The issue-20 proxies (MeCo, ZiCo, SWAP, AZ-NAS, TE-NAS's NTK) are reported beside their
papers' figures (`recent` in the JSON): over the cells scored so far, with the median and
range over 3 random 80% subsamples, and AZ-NAS's rank aggregate of its four components.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from predictors import combine  # noqa: E402
from predictors.metrics import kendall_tau, spearman  # noqa: E402
from predictors.proxies import list_proxies  # noqa: E402
from search_spaces import get_space  # noqa: E402
from workers.tables import load_table  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
IMAGES = SHARED / "cifar10-test-first20.npz"
NASLIB = SHARED / "nb201" / "naslib-zc-nb201-cifar10.json"
RESULTS = ROOT / "bench" / "results"
CACHE = RESULTS / "proxies_cells.jsonl"
#: Abdelfattah et al., ICLR 2021, Spearman on all 15,625 cells (CIFAR-10); params: this table.
PUBLISHED = {"synflow": 0.737, "jacov": 0.731, "snip": 0.596, "grad_norm": 0.594,
             "grasp": 0.514, "fisher": 0.36, "params": 0.753}
#: Why some proxies agree less with NASLib's scores (see the reply / README of the bench).
NOTES = {
    "naslib_data": "NASLib scored its cells with its own minibatch (a CIFAR-10 training batch, "
                   "jacov's maximum of -32 implies 32 images) and its own initialisation; ours "
                   "use the 20 test images and torch's default init with seed 0.",
    "grasp": "GraSP is a signed sum of Hessian-gradient terms that nearly cancel: our own "
             "score with init seed 1 instead of 0 agrees only 0.74 (Spearman, 40 NASLib "
             "cells); seed 0 vs NASLib 0.78 and seed 1 vs NASLib 0.88 on those cells. The "
             "low agreement is the proxy's seed noise, not a different definition.",
    "jacov": "The eigen-spectrum of a 20x20 (ours) vs 32x32 (NASLib) Jacobian correlation "
             "matrix: our seed 0 vs seed 1 agree 0.90 on 40 cells, the same level as with "
             "NASLib (0.91).",
    "fisher": "NASLib broadcasts each channel's saliency to every weight of the channel before "
              "summing (a fan-in weighting); with that convention we agree 0.97, without it "
              "0.88.",
    "flops": "NASLib's FLOPs count slightly more than conv/linear MACs; 0.996 agreement.",
    "coverage": "grasp (2-3 s per cell) and zen were scored on the first 300 cells of the "
                "sample only, to fit the time budget; the other proxies on all cells.",
}
QUICK_PROXIES = ["synflow", "nwot", "jacov", "params", "flops", "meco"]
#: NB201 CIFAR-10 figures of the proxies added in issue 20, as their papers report them
#: (Spearman, Kendall where given; quoted from the papers, the reference READMEs give none):
#: MeCo (NeurIPS 2023), ZiCo (ICLR 2023), SWAP with its regulariser (ICLR 2024), AZ-NAS's
#: aggregate (CVPR 2024), TE-NAS's NTK condition number (ICLR 2021, as other papers measured
#: it; sign: smaller condition number, better).
PUBLISHED_RECENT = {"meco": {"spearman": 0.894}, "zico": {"spearman": 0.80},
                    "swap_reg": {"spearman": 0.90}, "az_nas": {"spearman": 0.913,
                                                               "kendall": 0.741},
                    "te_ntk": {"spearman": 0.54, "kendall": 0.37}}
RECENT = ["meco", "zico", "swap", "swap_reg", "az_expressivity", "az_progressivity",
          "az_trainability", "te_ntk"]
#: How the scoring differs from the papers' (CPU, the data we have).
RECENT_NOTES = (
    "All proxies see the same 20 CIFAR-10 test images (the papers: training batches of "
    "64 (ZiCo: 2 x 64, split here into 2 x 10), 16 for SWAP, 1 for MeCo, the first "
    "example here); SWAP averages 8 weight draws (reference: 32); te_ntk is one kernel of 20 "
    "examples (TE-NAS: 3 repeats of 32); the sample of cells is bench/proxies.py's fixed "
    "order (NASLib's cells first).")
#: NASLib's key: ops over edges (0->1), (0->2), (0->3), (1->2), (1->3), (2->3), op ids below.
NASLIB_OPS = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
NASLIB_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
NASLIB_NAMES = {"jacov": "jacov", "nwot": "nwot", "synflow": "synflow", "snip": "snip",
                "grad_norm": "grad_norm", "fisher": "fisher", "grasp": "grasp",
                "params": "params", "flops": "flops"}


# ---- data ------------------------------------------------------------------------------
def naslib_reference() -> dict[str, dict[str, float]]:
    """NASLib's scores by NB201 cell string ({} when the shared file is absent)."""
    from search_spaces.nb201 import EDGES, cell_string

    if not NASLIB.is_file():
        return {}
    raw = json.loads(NASLIB.read_text())["cifar10"]
    out = {}
    for key, entry in raw.items():
        ids = [int(v) for v in key.strip("()").split(",")]
        by_edge = {edge: NASLIB_OPS[i] for edge, i in zip(NASLIB_EDGES, ids, strict=True)}
        cell = cell_string([by_edge[e] for e in EDGES])
        out[cell] = {ours: float(entry[theirs]["score"]) for ours, theirs in NASLIB_NAMES.items()
                     if isinstance(entry.get(theirs), dict)}
    return out


def sample_cells(keys: list[str], reference: dict, n: int, seed: int) -> list[str]:
    """NASLib's cells first (seeded order), then the rest of the table (seeded order)."""
    rng = np.random.default_rng(seed)
    first = sorted(k for k in reference if k in set(keys))
    rest = sorted(set(keys) - set(first))
    order = [first[i] for i in rng.permutation(len(first))]
    order += [rest[i] for i in rng.permutation(len(rest))]
    return order[:n]


# ---- scoring (worker processes) ----------------------------------------------------------
_EVALUATOR = None


def _init_worker(batch_size: int, seed: int) -> None:
    import torch

    from workers.evaluators.proxy import ProxyEvaluator

    global _EVALUATOR
    torch.set_num_threads(1)
    _EVALUATOR = ProxyEvaluator(get_space("nb201"), proxies=list_proxies(),
                                dataset=f"npz:{IMAGES}", batch_size=batch_size, seed=seed)


def _score(job: tuple[str, list[str]]) -> tuple[str, dict, dict]:
    key, names = job
    space = _EVALUATOR.space
    timings: dict[str, float] = {}
    scores = _EVALUATOR.compute(space.from_key(key), names, timings)
    return key, scores, timings


def data_key(batch_size: int, seed: int) -> str:
    return f"cifar10-test-first20|batch={batch_size}|seed={seed}"


def load_cache(path: Path, data: str) -> dict[str, dict]:
    cells: dict[str, dict] = {}
    if not path.is_file():
        return cells
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row["data"] != data:
            continue
        cell = cells.setdefault(row["arch"], {"scores": {}, "times": {}})
        cell["scores"].update(row["scores"])
        cell["times"].update(row["times"])
    return cells


def score_cells(cells: list[str], names: list[str], cache: dict[str, dict],
                cache_path: Path | None, workers: int, batch_size: int, seed: int,
                data: str, recompute: tuple[str, ...] = ()) -> None:
    def todo(key: str) -> list[str]:
        have = cache.get(key, {}).get("scores", {})
        return [p for p in names if p in recompute or p not in have]

    jobs = [(k, missing) for k in cells if (missing := todo(k))]
    if not jobs:
        return
    print(f"scoring {len(jobs)} cells ({workers} worker(s)) ...", flush=True)
    start = time.perf_counter()
    handle = open(cache_path, "a") if cache_path else None  # noqa: SIM115
    ctx = multiprocessing.get_context("fork")
    try:
        if workers > 1:
            pool = ctx.Pool(workers, _init_worker, (batch_size, seed))
            results = pool.imap_unordered(_score, jobs)
        else:
            _init_worker(batch_size, seed)
            pool, results = None, map(_score, jobs)
        for done, (key, scores, timings) in enumerate(results, start=1):
            cell = cache.setdefault(key, {"scores": {}, "times": {}})
            cell["scores"].update(scores)
            cell["times"].update(timings)
            if handle:
                handle.write(json.dumps({"arch": key, "data": data, "scores": scores,
                                         "times": timings}) + "\n")
                handle.flush()
            if done % 25 == 0 or done == len(jobs):
                rate = done / (time.perf_counter() - start)
                print(f"  {done}/{len(jobs)} cells, {rate:.2f} cells/s", flush=True)
        if pool:
            pool.close()
            pool.join()
    finally:
        if handle:
            handle.close()


# ---- analysis ----------------------------------------------------------------------------
def correlations(keys: list[str], cache: dict, table, reference: dict,
                 names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        have = [k for k in keys if name in cache[k]["scores"]]
        if len(have) < 10:
            continue
        values = [cache[k]["scores"][name] for k in have]
        test = [table.rows[k]["test_acc"] for k in have]
        valid = [table.rows[k]["valid_acc"] for k in have]
        times = [cache[k]["times"][name] for k in have if name in cache[k]["times"]]
        row = {"proxy": name, "n": len(have),
               "spearman_test": spearman(values, test), "kendall_test": kendall_tau(values, test),
               "spearman_valid": spearman(values, valid),
               "kendall_valid": kendall_tau(values, valid),
               "published_spearman": PUBLISHED.get(name),
               "time_s_mean": statistics.fmean(times), "time_s_median": statistics.median(times)}
        row["archs_per_s"] = 1.0 / row["time_s_mean"]
        overlap = [k for k in have if name in reference.get(k, {})]
        if len(overlap) >= 10:
            ours = [cache[k]["scores"][name] for k in overlap]
            theirs = [reference[k][name] for k in overlap]
            row["naslib_n"] = len(overlap)
            row["naslib_spearman"] = spearman(ours, theirs)
            row["naslib_own_spearman_valid"] = spearman(
                theirs, [table.rows[k]["valid_acc"] for k in overlap])
            row["ours_on_overlap_spearman_valid"] = spearman(
                ours, [table.rows[k]["valid_acc"] for k in overlap])
        rows.append(row)
    return rows


def reference_quantiles(keys: list[str], cache: dict, names: list[str]) -> dict[str, list]:
    """The 0%, 5%, ..., 100% quantiles of each proxy's transformed score over the cells that
    have it (`predictors.combine.NB201_QUANTILES` holds these figures)."""
    out = {}
    for name in names:
        t = [combine.transform(name, cache[k]["scores"][name]) for k in keys
             if name in cache[k]["scores"]]
        if len(t) >= 20:
            out[name] = [float(f"{q:.6g}") for q in np.quantile(t, np.linspace(0, 1, 21))]
    return out


def combined(keys: list[str], cache: dict, table, names: list[str], seed: int,
             default: list[str]) -> dict:
    """Combinations of proxies: the default battery, and every subset of 2..5 proxies ranked by
    mean rank, selected on valid_acc of one half of the cells, reported on the other half."""
    test = np.asarray([table.rows[k]["test_acc"] for k in keys])
    valid = np.asarray([table.rows[k]["valid_acc"] for k in keys])
    scores = {n: [cache[k]["scores"][n] for k in keys] for n in names}
    out: dict = {"n": len(keys)}
    battery = [n for n in default if n in scores]
    if battery:
        sub = {n: scores[n] for n in battery}
        rank = combine.mean_rank(sub)
        z = combine.zscore_mean(sub)
        out["default_battery"] = {
            "proxies": battery,
            "mean_rank_spearman_test": spearman(rank, test),
            "mean_rank_spearman_valid": spearman(rank, valid),
            "mean_rank_kendall_test": kendall_tau(rank, test),
            "zscore_spearman_test": spearman(z, test),
            "zscore_kendall_test": kendall_tau(z, test),
            "zscore_spearman_valid": spearman(z, valid)}
        if all(n in combine.NB201_QUANTILES for n in battery):
            fixed = [combine.fixed_score({n: cache[k]["scores"][n] for n in battery})
                     for k in keys]
            out["default_battery"]["fixed_score_spearman_test"] = spearman(fixed, test)
            out["default_battery"]["fixed_score_kendall_test"] = kendall_tau(fixed, test)
            out["default_battery"]["fixed_score_spearman_valid"] = spearman(fixed, valid)
    rng = np.random.default_rng(seed)
    half = rng.permutation(len(keys))
    select, held = half[: len(keys) // 2], half[len(keys) // 2:]
    from scipy.stats import rankdata

    ranks = {n: rankdata([combine.transform(n, v) for v in scores[n]]) for n in names}
    found = []
    for size in range(2, 6):
        for subset in itertools.combinations(names, size):
            mean = np.mean([ranks[n] for n in subset], axis=0)
            found.append((spearman(mean[select], valid[select]), subset, mean))
    found.sort(key=lambda t: -t[0])
    out["subset_search"] = [
        {"proxies": list(subset), "select_spearman_valid": sel,
         "held_out_spearman_test": spearman(mean[held], test[held]),
         "all_spearman_test": spearman(mean, test)}
        for sel, subset, mean in found[:8]]
    return out


def throughput(rows: list[dict], battery: list[str]) -> dict:
    per = {r["proxy"]: r["time_s_mean"] for r in rows}
    cell_s = sum(per[n] for n in battery if n in per)
    return {"battery": battery, "seconds_per_cell": cell_s,
            "all_15625_cells_minutes_one_process": cell_s * 15625 / 60,
            "all_15625_cells_minutes_two_processes": cell_s * 15625 / 60 / 2,
            "source": "mean per-cell times in the cache, taken by the scoring workers (two "
                      "concurrent ones for bench/results/proxies.json, on a shared machine)",
            "cpu_count": os.cpu_count(),
            "load_average_1m_at_report": os.getloadavg()[0]}


def fresh_timing(keys: list[str], battery: list[str], batch_size: int, seed: int) -> dict:
    """The default battery timed again in this process (one thread, no cache, no other worker
    of ours running): the cached per-cell times were taken by concurrent workers."""
    _init_worker(batch_size, seed)
    per: dict[str, list[float]] = {n: [] for n in battery}
    start = time.perf_counter()
    for key in keys:
        _, _, timings = _score((key, battery))
        for name in battery:
            per[name].append(timings[name])
    wall = time.perf_counter() - start
    cell_s = wall / len(keys)
    return {"cells": len(keys), "battery": battery, "seconds_per_cell": cell_s,
            "proxy_seconds_mean": {n: statistics.fmean(v) for n, v in per.items()},
            "all_15625_cells_minutes_one_process": cell_s * 15625 / 60,
            "all_15625_cells_minutes_two_processes": cell_s * 15625 / 60 / 2,
            "load_average_1m": os.getloadavg()[0]}


def recent_report(keys: list[str], cache: dict, table, seeds: int = 3,
                  fraction: float = 0.8) -> dict:
    """The issue-20 proxies beside their published figures: Spearman and Kendall with
    test_acc over the cells that have each, the median and range over `seeds` random
    subsamples (`fraction` of those cells), and AZ-NAS's aggregate of its four components
    (population ranks, the paper's; and `az_nas`'s fixed NB201-quantile placement)."""
    scored = {n: [k for k in keys if n in cache[k]["scores"]] for n in RECENT}
    columns = {n: [cache[k]["scores"][n] for k in have] for n, have in scored.items()}
    parts = combine.AZ_NAS_COMPONENTS
    az_keys = [k for k in keys if all(p in cache[k]["scores"] for p in parts)]
    if len(az_keys) >= 10:
        comp = {p: [cache[k]["scores"][p] for k in az_keys] for p in parts}
        scored["az_nas"] = az_keys
        columns["az_nas"] = list(combine.log_rank_sum(comp))
        if all(p in combine.NB201_QUANTILES for p in parts):
            scored["az_nas.fixed"] = az_keys
            columns["az_nas.fixed"] = [
                combine.az_nas_score({p: cache[k]["scores"][p] for p in parts})
                for k in az_keys]
    out = {}
    for name, have in scored.items():
        if len(have) < 10:
            continue
        values = np.asarray(columns[name])
        test = np.asarray([table.rows[k]["test_acc"] for k in have])
        spread = []
        for seed in range(seeds):
            pick = np.random.default_rng(seed).permutation(len(have))[: int(fraction * len(have))]
            spread.append(spearman(values[pick], test[pick]))
        times = [cache[k]["times"][name] for k in have if name in cache[k]["times"]]
        out[name] = {"n": len(have), "spearman_test": spearman(values, test),
                     "kendall_test": kendall_tau(values, test),
                     "subsample_spearman_median": statistics.median(spread),
                     "subsample_spearman_min": min(spread),
                     "subsample_spearman_max": max(spread),
                     "published": PUBLISHED_RECENT.get(name.split(".")[0]),
                     "time_s_mean": statistics.fmean(times) if times else None}
    return out


def print_recent(recent: dict) -> None:
    print(f"\n{'new proxy':16} {'n':>4} {'rho test':>8} {'tau test':>8} "
          f"{'median (min-max) of 3 x 80%':>28} {'publ. rho':>9} {'s/cell':>7}")
    for name, r in recent.items():
        pub = (r["published"] or {}).get("spearman")
        spread = (f"{r['subsample_spearman_median']:.3f} ({r['subsample_spearman_min']:.3f}-"
                  f"{r['subsample_spearman_max']:.3f})")
        sec = f"{r['time_s_mean']:.2f}" if r["time_s_mean"] is not None else "-"
        print(f"{name:16} {r['n']:4d} {r['spearman_test']:8.3f} {r['kendall_test']:8.3f} "
              f"{spread:>28} {pub if pub is not None else '-':>9} {sec:>7}")


def print_report(rows: list[dict], comb: dict, speed: dict) -> None:
    print(f"\n{'proxy':10} {'n':>5} {'rho test':>8} {'tau test':>8} {'rho val':>8} "
          f"{'publ.':>6} {'vs NASLib':>9} {'archs/s':>8}")
    for r in sorted(rows, key=lambda r: -r["spearman_test"]):
        pub = f"{r['published_spearman']:.3f}" if r["published_spearman"] else "-"
        nas = f"{r['naslib_spearman']:.3f}" if "naslib_spearman" in r else "-"
        print(f"{r['proxy']:10} {r['n']:5d} {r['spearman_test']:8.3f} {r['kendall_test']:8.3f} "
              f"{r['spearman_valid']:8.3f} {pub:>6} {nas:>9} {r['archs_per_s']:8.2f}")
    d = comb.get("default_battery")
    if d:
        print(f"\ndefault battery {'+'.join(d['proxies'])}: mean rank rho test "
              f"{d['mean_rank_spearman_test']:.3f}, z-score rho test "
              f"{d['zscore_spearman_test']:.3f}"
              + (f", fixed score rho test {d['fixed_score_spearman_test']:.3f}"
                 if "fixed_score_spearman_test" in d else ""))
    print("best subsets (mean rank; chosen on valid_acc of half the cells):")
    for s in comb["subset_search"][:5]:
        print(f"  {'+'.join(s['proxies']):40} select rho valid {s['select_spearman_valid']:.3f}"
              f"  held-out rho test {s['held_out_spearman_test']:.3f}")
    print(f"\ndefault battery: {speed['seconds_per_cell']:.2f} s per cell; all 15,625 cells: "
          f"{speed['all_15625_cells_minutes_one_process']:.0f} min in one process, "
          f"{speed['all_15625_cells_minutes_two_processes']:.0f} min on 2 cores "
          f"(cached times, concurrent workers)")
    if "fresh" in speed:
        f = speed["fresh"]
        print(f"timed afresh on {f['cells']} cells (load {f['load_average_1m']:.1f}): "
              f"{f['seconds_per_cell']:.2f} s per cell; all 15,625: "
              f"{f['all_15625_cells_minutes_one_process']:.0f} min in one process, "
              f"{f['all_15625_cells_minutes_two_processes']:.0f} min on 2 cores")


def images_present() -> bool:
    """Whether the 20 CIFAR-10 images of ../shared/data are here; when not, a user's clone
    skips the benchmark with a note and CI (CI=true) fails."""
    if IMAGES.is_file():
        return True
    message = f"{IMAGES} not found (see shared/data/README.md)"
    if os.environ.get("CI", "").lower() == "true":
        sys.exit(f"CI=true but {message}")
    print(f"skipped: {message}")
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="60 cells, cheap proxies, no cache")
    parser.add_argument("--proxies", nargs="*", default=None, help="compute only these")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score-only", action="store_true", help="compute, do not analyse")
    parser.add_argument("--time-cells", type=int, default=20,
                        help="time the default battery afresh on this many cells (0: skip)")
    parser.add_argument("--recompute", nargs="*", default=[],
                        help="compute these proxies again even when cached (new lines win)")
    parser.add_argument("--json", default=None, help="results file (default: "
                        "bench/results/proxies.json; --quick: none)")
    args = parser.parse_args()
    if not images_present():
        return
    from workers.evaluators.proxy import DEFAULT_PROXIES

    n = 60 if args.quick else args.cells
    names = args.proxies or (QUICK_PROXIES if args.quick else list_proxies())
    table = load_table("nb201-cifar10")
    reference = naslib_reference()
    keys = sample_cells(sorted(table.rows), reference, n, args.seed)
    data = data_key(args.batch_size, args.seed)
    cache_path = None if args.quick else CACHE
    cache = {} if args.quick else load_cache(CACHE, data)
    score_cells(keys, names, cache, cache_path, args.workers, args.batch_size, args.seed, data,
                tuple(args.recompute))
    if args.score_only:
        return
    available = [p for p in list_proxies() if all(p in cache[k]["scores"] for k in keys)]
    rows = correlations(keys, cache, table, reference, list_proxies())
    battery = list(DEFAULT_PROXIES)
    comb = combined(keys, cache, table, available, args.seed, battery)
    speed = throughput(rows, battery)
    if args.time_cells > 0 and not args.quick:
        speed["fresh"] = fresh_timing(keys[: args.time_cells], battery, args.batch_size,
                                      args.seed)
    result = {"cells": n, "data": data, "space": "nb201 (channels 16, 5 cells per stage)",
              "naslib_overlap": sum(k in reference for k in keys), "proxies": rows,
              "combined": comb, "throughput": speed,
              "notes": NOTES,
              "reference_quantiles": reference_quantiles(keys, cache, list_proxies()),
              "recent": recent_report(keys, cache, table), "recent_notes": RECENT_NOTES}
    print_report(rows, comb, speed)
    print_recent(result["recent"])
    out = args.json or (None if args.quick else str(RESULTS / "proxies.json"))
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
