"""Learning from proxies on NAS-Bench-201 CIFAR-10: a few-label predictor on proxy features
and an evolved (EMQ-style) proxy formula.

1. Few labels (`predictors.fewshot`): the 1,000 cells scored by `bench/proxies.py` (its
   cache `bench/results/proxies_cells.jsonl`, filled in here when cells are missing: hours
   on 2 cores from a clean checkout, resumable); for 10, 20 and 50 labels, 30 random label
   subsets each: a labelled subset's valid_acc trains the predictor, which ranks the other
   cells; Spearman/Kendall against test_acc on those held-out cells (mean +- std over the
   subsets), next to the zero-label combined score (`combine.mean_rank` of
   synflow+jacov+params over all 1,000 cells, no labels) on the same held-out cells.
2. Evolved proxy (`predictors.evolved`): per-layer statistics of every cell's untrained
   network (16 channels, 5 cells per stage, the 20 CIFAR-10 test images, seed 0 -- the
   proxy evaluator's setting) are computed once into `bench/results/proxy_stats_cells.npz`;
   an evolution searches formulas whose fitness is the Spearman with valid_acc on 100
   labelled cells; the best is reported against test_acc on the other 900 cells, next to
   synflow, jacov and nwot on the same cells, and stored as `evolved.nb201` in
   `predictors/data/evolved_proxies.json`.

    python bench/proxy_learning.py --workers 2   # full: fills the stats cache (resumable)
    python bench/proxy_learning.py --quick       # CI (< 60 s): 60 cells scored live on a
                                                 # small network, a temporary folder,
                                                 # nothing stored

Writes bench/results/proxy_learning.json (`--quick`: in a fresh temporary folder).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.proxies import (  # noqa: E402
    CACHE,
    IMAGES,
    data_key,
    images_present,
    load_cache,
    naslib_reference,
    sample_cells,
    score_cells,
)
from predictors import combine, evolved, fewshot  # noqa: E402
from predictors.metrics import kendall_tau, spearman  # noqa: E402
from search_spaces import NB201Space  # noqa: E402
from workers.tables import load_table  # noqa: E402

RESULTS = ROOT / "bench" / "results"
STATS = RESULTS / "proxy_stats_cells.npz"
FULL = {"cells": 1000, "labels": (10, 20, 50), "subsets": 30, "evo_labels": 100, "evo_steps": 4000,
        "evo_population": 64, "evo_seeds": (0, 1, 2), "space": {}}
QUICK = {"labels": (10, 20), "subsets": 5, "evo_labels": 30, "evo_steps": 300,
         "evo_population": 24, "evo_seeds": (0,), "cells": 60,
         "space": {"channels": 4, "cells_per_stage": 1}}
ZERO_LABEL = ("synflow", "jacov", "params")
BASELINES = ("synflow", "jacov", "nwot", "snip", "params")


# ---- the statistics cache ----------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(space_args: dict, batch_size: int, seed: int) -> None:
    import torch

    from workers.evaluators.proxy import ProxyEvaluator

    torch.set_num_threads(1)
    space = NB201Space(**space_args)
    _WORKER["space"] = space
    _WORKER["evaluator"] = ProxyEvaluator(space, proxies=["params"], dataset=f"npz:{IMAGES}",
                                          batch_size=batch_size, seed=seed)
    _WORKER["seed"] = seed


def _cell_stats(key: str) -> tuple[str, np.ndarray, float]:
    """One cell's statistics, as the proxy evaluator would see it (fresh model, seed)."""
    import torch

    start = time.perf_counter()
    space = _WORKER["space"]
    arch = space.from_key(key)
    inputs, targets = _WORKER["evaluator"].batch(arch)
    torch.manual_seed(_WORKER["seed"])
    stats = evolved.layer_stats(space.build(arch), inputs, targets)
    return key, stats.astype(np.float32), time.perf_counter() - start


def load_stats(path: Path, data: str) -> dict[str, tuple[np.ndarray, float]]:
    """Cached statistics by cell key ({} when absent or computed on other data)."""
    if not path.is_file():
        return {}
    with np.load(path) as z:
        if str(z["data"]) != data or tuple(z["columns"]) != evolved.STAT_COLUMNS:
            return {}
        offsets, stats = z["offsets"], z["stats"]
        return {str(k): (stats[offsets[i]:offsets[i + 1]], float(z["seconds"][i]))
                for i, k in enumerate(z["cells"])}


def save_stats(path: Path, data: str, cache: dict[str, tuple[np.ndarray, float]]) -> None:
    keys = sorted(cache)
    offsets = np.cumsum([0] + [len(cache[k][0]) for k in keys])
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, cells=np.asarray(keys), offsets=offsets,
                        stats=np.concatenate([cache[k][0] for k in keys]).astype(np.float32),
                        seconds=np.asarray([cache[k][1] for k in keys]),
                        columns=np.asarray(evolved.STAT_COLUMNS), data=np.asarray(data))
    os.replace(tmp, path)


def fill_stats(keys: list[str], cache: dict, path: Path | None, workers: int,
               space_args: dict, batch_size: int, seed: int, data: str) -> None:
    """Compute the missing cells' statistics (saved every 100 cells: resumable)."""
    todo = [k for k in keys if k not in cache]
    if not todo:
        return
    print(f"layer statistics of {len(todo)} cells ({workers} worker(s)) ...", flush=True)
    start = time.perf_counter()
    init = (space_args, batch_size, seed)
    if workers > 1:
        pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, init)
        results = pool.imap_unordered(_cell_stats, todo)
    else:
        _init_worker(*init)
        pool, results = None, map(_cell_stats, todo)
    try:
        for done, (key, stats, seconds) in enumerate(results, start=1):
            cache[key] = (stats, seconds)
            if done % 100 == 0 or done == len(todo):
                rate = done / (time.perf_counter() - start)
                print(f"  {done}/{len(todo)} cells, {rate:.2f} cells/s", flush=True)
                if path is not None:
                    save_stats(path, data, cache)
    finally:
        if pool:
            pool.close()
            pool.join()


# ---- the proxies' scores ------------------------------------------------------------------
def proxy_scores(table, cfg: dict, quick: bool, workers: int, seed: int) -> dict[str, dict]:
    """Scores of `fewshot.FEATURE_PROXIES` by cell key. Full: bench/proxies.py's sample of
    `cfg["cells"]` cells on the default network, from its cache, scoring missing cells into
    it. Quick: `cfg["cells"]` random cells scored live on `cfg["space"]`, nothing stored."""
    names = list(fewshot.FEATURE_PROXIES)
    if not quick:
        data = data_key(20, seed)
        cells = load_cache(CACHE, data)
        keys = sample_cells(sorted(table.rows), naslib_reference(), cfg["cells"], seed)
        score_cells(keys, names, cells, CACHE, workers, 20, seed, data)
        return {k: cells[k] for k in keys}
    from workers.evaluators.proxy import ProxyEvaluator

    space = NB201Space(**cfg["space"])
    evaluator = ProxyEvaluator(space, proxies=names, dataset=f"npz:{IMAGES}", batch_size=20,
                               seed=seed)
    rows = sorted(table.rows)
    keys = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))[: cfg["cells"]]]
    cells = {}
    for key in keys:
        times: dict[str, float] = {}
        scores = evaluator.compute(space.from_key(key), names, times)
        cells[key] = {"scores": scores, "times": times}
    return cells


# ---- 1. few labels -----------------------------------------------------------------------
def _summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def few_labels(keys: list[str], cells: dict, table, label_counts: tuple[int, ...],
               subsets: int, seed: int) -> dict:
    """Held-out Spearman/Kendall vs test_acc of the few-label predictors and the zero-label
    combined score, over `subsets` random label subsets per label count."""
    scores = {n: [cells[k]["scores"][n] for k in keys] for n in fewshot.FEATURE_PROXIES}
    features = fewshot.proxy_features(scores)
    zero = combine.mean_rank({n: scores[n] for n in ZERO_LABEL})
    valid = np.asarray([table.rows[k]["valid_acc"] for k in keys])
    test = np.asarray([table.rows[k]["test_acc"] for k in keys])
    methods = {
        "zero_label": lambda lab, s: zero,
        "gbdt": lambda lab, s: fewshot.few_label_scores(features, lab, valid[lab], seed=s),
        "residual": lambda lab, s: fewshot.few_label_scores(features, lab, valid[lab],
                                                            zero_label=zero, seed=s),
        "residual_lambda1": lambda lab, s: fewshot.few_label_scores(
            features, lab, valid[lab], zero_label=zero, seed=s, reg_lambda=1.0),
        "residual_lambda20": lambda lab, s: fewshot.few_label_scores(
            features, lab, valid[lab], zero_label=zero, seed=s, reg_lambda=20.0),
    }
    out: dict = {"cells": len(keys), "features": list(fewshot.FEATURE_PROXIES),
                 "zero_label_proxies": list(ZERO_LABEL), "subsets": subsets, "by_labels": {}}
    start = time.perf_counter()
    for n in label_counts:
        rows: dict[str, dict[str, list[float]]] = {m: {"spearman": [], "kendall": [],
                                                       "spearman_valid": []}
                                                   for m in methods}
        for i in range(subsets):
            rng = np.random.default_rng(seed * 1000 + n * 100 + i)
            lab = rng.choice(len(keys), n, replace=False)
            rest = np.setdiff1d(np.arange(len(keys)), lab)
            for name, method in methods.items():
                pred = method(lab, i)
                rows[name]["spearman"].append(spearman(pred[rest], test[rest]))
                rows[name]["kendall"].append(kendall_tau(pred[rest], test[rest]))
                rows[name]["spearman_valid"].append(spearman(pred[rest], valid[rest]))
        out["by_labels"][str(n)] = {m: {k: _summary(v) for k, v in r.items()}
                                    for m, r in rows.items()}
    out["seconds"] = time.perf_counter() - start
    return out


# ---- 2. the evolved proxy -------------------------------------------------------------------
def _correlations(values: np.ndarray, valid: np.ndarray, test: np.ndarray) -> dict:
    return {"spearman_test": spearman(values, test), "kendall_test": kendall_tau(values, test),
            "spearman_valid": spearman(values, valid)}


def evolve_proxy(keys: list[str], stats: dict, cells: dict, table, cfg: dict,
                 seed: int) -> dict:
    """Evolve on `cfg['evo_labels']` labelled cells (valid_acc), report on the others."""
    order = np.random.default_rng(seed).permutation(len(keys))
    lab = [keys[i] for i in order[: cfg["evo_labels"]]]
    rest = [keys[i] for i in order[cfg["evo_labels"]:]]
    valid = {k: table.rows[k]["valid_acc"] for k in keys}
    test = {k: table.rows[k]["test_acc"] for k in keys}
    lab_batch = evolved.StatsBatch([stats[k][0] for k in lab])
    rest_batch = evolved.StatsBatch([stats[k][0] for k in rest])
    fitness = evolved.rank_fitness(lab_batch, [valid[k] for k in lab])
    runs = []
    for s in cfg["evo_seeds"]:
        start = time.perf_counter()
        result = evolved.evolve(fitness, population=cfg["evo_population"],
                                steps=cfg["evo_steps"], seed=s,
                                seeds=evolved.SEED_FORMULAS.values())
        runs.append((result, time.perf_counter() - start, s))
    best, _, _ = max(runs, key=lambda r: r[0].best_fitness)
    v_rest = np.asarray([valid[k] for k in rest])
    t_rest = np.asarray([test[k] for k in rest])
    lab_valid = np.asarray([valid[k] for k in lab])

    def report(formula: evolved.Formula) -> dict:
        on_lab = lab_batch.evaluate(formula)
        on_rest = rest_batch.evaluate(formula)
        return {"formula": str(formula), "size": formula.size(),
                "fitness_spearman_valid_labelled": spearman(on_lab, lab_valid),
                "kendall_valid_labelled": kendall_tau(on_lab, lab_valid),
                "rest": _correlations(on_rest, v_rest, t_rest)}

    out: dict = {"labelled": len(lab), "rest": len(rest),
                 "best": {**report(best.best), "json": best.best.to_json()},
                 "runs": [{"seed": s, "seconds": sec, "evaluated": r.evaluated,
                           "best_fitness": r.best_fitness, "formula": str(r.best),
                           "rest_spearman_test": spearman(rest_batch.evaluate(r.best), t_rest),
                           "fitness_after_steps": {str(i): r.history[i - 1] for i in
                                                   (1, len(r.history) // 4,
                                                    len(r.history) // 2, len(r.history))
                                                   if i >= 1}}
                          for r, sec, s in runs],
                 "top_of_best_run": [{"fitness": f, "formula": str(x)}
                                     for f, x in best.top[:5]],
                 "seed_formulas": {name: report(f)
                                   for name, f in evolved.SEED_FORMULAS.items()}}
    have = [p for p in BASELINES if all(p in cells.get(k, {}).get("scores", {}) for k in rest)]
    out["baselines_rest"] = {
        p: _correlations(np.asarray([combine.transform(p, cells[k]["scores"][p])
                                     for k in rest]), v_rest, t_rest) for p in have}
    if all(p in cells.get(k, {}).get("scores", {}) for p in ZERO_LABEL for k in keys):
        zero = combine.mean_rank({p: [cells[k]["scores"][p] for k in keys] for p in ZERO_LABEL})
        position = {k: i for i, k in enumerate(keys)}
        out["baselines_rest"]["zero_label_" + "+".join(ZERO_LABEL)] = _correlations(
            zero[[position[k] for k in rest]], v_rest, t_rest)
    # consistency of the cache: formulas that restate a built-in proxy rank like it
    restated = {"snip": "snip", "grad_norm": "grad_norm"}
    out["cache_check_spearman_vs_builtin"] = {
        name: spearman(rest_batch.evaluate(evolved.SEED_FORMULAS[name]),
                       [cells[k]["scores"][proxy] for k in rest])
        for name, proxy in restated.items()
        if all(proxy in cells.get(k, {}).get("scores", {}) for k in rest)}
    start = time.perf_counter()
    all_batch = evolved.StatsBatch([stats[k][0] for k in keys])
    all_batch.evaluate(best.best)
    out["score_all_cells_from_cache_s"] = time.perf_counter() - start
    return out


def direct_check(keys: list[str], stats: dict, formula: evolved.Formula, space_args: dict,
                 seed: int) -> dict:
    """The formula computed directly on freshly built networks (the registered proxy's
    path) against the value from the cached statistics, and its time per cell."""
    import torch

    _init_worker(space_args, 20, seed)
    space = _WORKER["space"]
    rows = []
    for key in keys:
        arch = space.from_key(key)
        inputs, targets = _WORKER["evaluator"].batch(arch)
        torch.manual_seed(seed)
        model = space.build(arch)
        start = time.perf_counter()
        direct = evolved.evaluate_model(formula, model, inputs, targets)
        seconds = time.perf_counter() - start
        cached = float(evolved.evaluate_stats(formula, stats[key][0]))
        rows.append({"cell": key, "direct": direct, "cached": cached, "seconds": seconds})
    rel = [abs(r["direct"] - r["cached"]) / max(abs(r["direct"]), 1e-12) for r in rows]
    return {"cells": rows, "max_relative_difference": max(rel),
            "seconds_per_cell": statistics.fmean(r["seconds"] for r in rows)}


def fresh_stats_timing(keys: list[str], space_args: dict, seed: int) -> dict:
    """`layer_stats` timed again in this process, one thread (the cached per-cell times were
    taken by two concurrent workers): model build + forward/backward + moments."""
    import torch

    _init_worker(space_args, 20, seed)
    space = _WORKER["space"]
    times, passes = [], []
    for key in keys:
        arch = space.from_key(key)
        inputs, targets = _WORKER["evaluator"].batch(arch)
        start = time.perf_counter()
        torch.manual_seed(seed)
        evolved.layer_stats(space.build(arch), inputs, targets)
        times.append(time.perf_counter() - start)
        torch.manual_seed(seed)
        model = space.build(arch)
        start = time.perf_counter()
        evolved.layer_tensors(model, inputs, targets)
        passes.append(time.perf_counter() - start)
    per_cell = statistics.fmean(times)
    return {"cells": len(keys), "seconds_per_cell_mean": per_cell,
            "seconds_per_cell_median": statistics.median(times),
            "pass_only_seconds_mean": statistics.fmean(passes),
            "note": "seconds_per_cell: build + layer_stats; pass_only: the forward/backward "
                    "with hooks alone (the rest of layer_stats is the moments)",
            "cells_1000_minutes_one_process": per_cell * 1000 / 60,
            "load_average_1m": os.getloadavg()[0]}


# ---- report --------------------------------------------------------------------------------
def print_report(result: dict) -> None:
    few = result["few_labels"]
    print(f"\nfew labels ({few['cells']} cells, {few['subsets']} subsets each; Spearman vs "
          "test_acc on the held-out cells, mean +- std)")
    for n, by in few["by_labels"].items():
        line = "  ".join(f"{m} {r['spearman']['mean']:.3f}+-{r['spearman']['std']:.3f}"
                         for m, r in by.items())
        print(f"  {n:>3} labels: {line}")
    evo = result["evolved"]
    b = evo["best"]
    print(f"\nevolved proxy (fitness: Spearman vs valid_acc on {evo['labelled']} cells):")
    print(f"  {b['formula']}")
    print(f"  fitness {b['fitness_spearman_valid_labelled']:.3f}; on the other {evo['rest']} "
          f"cells: Spearman test {b['rest']['spearman_test']:.3f}, Kendall test "
          f"{b['rest']['kendall_test']:.3f}")
    for p, r in evo["baselines_rest"].items():
        print(f"  {p:10} on the same cells: Spearman test {r['spearman_test']:.3f}, "
              f"Kendall test {r['kendall_test']:.3f}")
    for run in evo["runs"]:
        print(f"  run seed {run['seed']}: fitness {run['best_fitness']:.3f}, rest test "
              f"{run['rest_spearman_test']:.3f}, {run['evaluated']} formulas in "
              f"{run['seconds']:.1f} s: {run['formula']}")
    t = result["timing"]
    print(f"\nstatistics: {t['stats_seconds_per_cell_mean']:.2f} s per cell (median "
          f"{t['stats_seconds_per_cell_median']:.2f}); direct evaluation "
          f"{result['direct_check']['seconds_per_cell']:.2f} s per cell, max relative "
          f"difference to the cache {result['direct_check']['max_relative_difference']:.2g}")
    f = t["fresh"]
    print(f"statistics timed afresh on {f['cells']} cells (one process, load "
          f"{f['load_average_1m']:.1f}): {f['seconds_per_cell_mean']:.2f} s per cell "
          f"(forward/backward {f['pass_only_seconds_mean']:.2f} s); 1,000 cells "
          f"{f['cells_1000_minutes_one_process']:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run (< 60 s)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="results file")
    parser.add_argument("--no-store", action="store_true",
                        help="do not store the formula as evolved.nb201")
    args = parser.parse_args()
    if not images_present():
        return
    import torch

    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    out_dir = Path(tempfile.mkdtemp(prefix="proxy_learning_")) if args.quick else RESULTS
    table = load_table("nb201-cifar10")
    data = data_key(20, args.seed)
    cells = proxy_scores(table, cfg, args.quick, args.workers, args.seed)
    keys = sorted(cells)
    start = time.perf_counter()
    result: dict = {"mode": "quick" if args.quick else "full", "config": cfg,
                    "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                                "torch": torch.__version__,
                                "load_average_1m_at_start": os.getloadavg()[0]}}
    result["few_labels"] = few_labels(keys, cells, table, cfg["labels"], cfg["subsets"],
                                      args.seed)
    stats_path = out_dir / STATS.name
    # the default network's statistics are keyed like the proxies' cache
    stats_data = f"{data}|space={json.dumps(cfg['space'], sort_keys=True)}" \
        if cfg["space"] else data
    stats = load_stats(stats_path, stats_data)
    fill_stats(keys, stats, stats_path, args.workers, cfg["space"], 20, args.seed, stats_data)
    result["evolved"] = evolve_proxy(keys, stats, cells, table, cfg, args.seed)
    formula = evolved.Formula.from_json(result["evolved"]["best"]["json"])
    result["direct_check"] = direct_check(keys[:3], stats, formula, cfg["space"], args.seed)
    seconds = [stats[k][1] for k in keys]
    fresh = fresh_stats_timing(keys[:3 if args.quick else 20], cfg["space"], args.seed)
    result["timing"] = {"stats_seconds_per_cell_mean": statistics.fmean(seconds),
                        "stats_seconds_per_cell_median": statistics.median(seconds),
                        "stats_cells": len(seconds),
                        "stats_source": "per-cell wall time (build + pass + moments) taken "
                                        "by the caching workers on a shared 2-core machine",
                        "fresh": fresh,
                        "stats_file_bytes": stats_path.stat().st_size,
                        "total_s": time.perf_counter() - start,
                        "load_average_1m_at_end": os.getloadavg()[0]}
    registry = out_dir / "evolved_proxies.json" if args.quick else evolved.REGISTRY_PATH
    if not args.no_store:
        b = result["evolved"]["best"]
        evolved.save_formula("nb201", formula, registry,
                             fitness_spearman_valid=b["fitness_spearman_valid_labelled"],
                             rest_spearman_test=b["rest"]["spearman_test"],
                             source="bench/proxy_learning.py: NAS-Bench-201 CIFAR-10, "
                                    f"{result['evolved']['labelled']} labelled cells, "
                                    "20 CIFAR-10 test images, init seed 0")
        result["registry"] = str(registry)
    print_report(result)
    path = Path(args.json) if args.json else out_dir / "proxy_learning.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
