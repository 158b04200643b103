"""Training-free design (issue 18): DeepMAD's entropy and As-ViT's measures on NAS-Bench-201,
and the designed networks against random ones of the same budget, trained on digits.

The benchmark is a list of named sections (`SECTIONS`), each a separate function taking the
parsed arguments and returning a JSON-able dict; `main()` runs them in order (or those named
with `--sections`) and writes their results under their names. `--quick` (CI smoke) runs
every section on a small sample in about 30 s in total and writes nothing unless `--json` is
given; the full mode writes bench/results/training_free.json.

    python bench/training_free.py                 # every section, full size
    python bench/training_free.py --quick
    python bench/training_free.py --sections deepmad_nb201 --json /tmp/t.json

Sections:
- deepmad_nb201: Spearman of DeepMAD's entropy (MAE-NAS) with NB201 CIFAR-10 test accuracy.
- deepmad_vs_random: DeepMAD's design against random `mbconv` networks at the same FLOPs
  budget, both trained with the `train` evaluator on digits over several seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
SHARED = ROOT.parent / "shared" / "data"


# ---- DeepMAD (helper H5) -------------------------------------------------------------------
#: No published Spearman of DeepMAD's (or MAE-NAS's) entropy on NB201: the papers report
#: ImageNet/COCO designs only. Peers: params and FLOPs on the same cells (this run), the
#: published params figure (Abdelfattah et al., ICLR 2021, all 15,625 cells) and the other
#: proxies measured by bench/proxies.py (bench/results/proxies.json, 1,000 cells).
PUBLISHED_PARAMS_SPEARMAN = 0.753
#: The digits-sized `mbconv` space of section deepmad_vs_random (small, so that each
#: trained network takes seconds on a CPU).
DIGITS_MBCONV = {"input_size": 8, "input_channels": 1, "num_classes": 10,
                 "stage_channels": [16, 24, 32], "stage_strides": [2, 2, 1],
                 "stem_channels": 8, "head_channels": 64, "depths": [1, 2, 3],
                 "expand_ratios": [2, 3, 4], "kernel_sizes": [3, 5],
                 "width_mults": [0.5, 0.75, 1.0]}


def _spread(values: list[float]) -> dict:
    import numpy as np

    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "median": float(np.median(values)), "min": float(min(values)),
            "max": float(max(values)), "n": len(values)}


def deepmad_nb201(args: argparse.Namespace) -> dict:
    """Spearman of DeepMAD's entropy with NB201 CIFAR-10 test accuracy: the analytic entropy
    of the `deepmad` strategy on every cell (quick: 1,000), and the `deepmad_entropy` proxy
    measured on built networks (default NB201 network, one Gaussian input) on a sample."""
    import numpy as np
    import torch

    from nas.strategies.deepmad import effectiveness, entropy, structure_of
    from predictors.metrics import kendall_tau, spearman
    from predictors.proxies import run_proxy
    from search_spaces import get_space
    from workers.tables import load_table

    table = load_table("nb201-cifar10")
    space = get_space("nb201")
    keys = sorted(table.rows)
    rng = np.random.default_rng(args.seed)
    keys = [keys[i] for i in rng.permutation(len(keys))]
    analytic_keys = keys[:1000] if args.quick else keys
    archs = [space.from_key(k) for k in analytic_keys]
    test = [table.rows[k]["test_acc"] for k in analytic_keys]
    structures = [structure_of(space, a) for a in archs]
    scores = {"deepmad_entropy (analytic)": [entropy(s) for s in structures],
              "params": [space.params(a) for a in archs],
              "flops": [space.flops(a) for a in archs]}
    rho = [effectiveness(s) for s in structures]
    out: dict = {"cells": len(analytic_keys), "analytic": {
        name: {"spearman_test": spearman(v, test), "kendall_test": kendall_tau(v, test)}
        for name, v in scores.items()}}
    out["effectiveness_range"] = [float(min(rho)), float(max(rho))]
    sample = keys[: 3 if args.quick else args.proxy_cells]
    torch.set_num_threads(1)
    start = time.perf_counter()
    measured = [run_proxy("deepmad_entropy", space.build(space.from_key(k)),
                          torch.zeros(1, 3, 32, 32), None, seed=args.seed) for k in sample]
    seconds = (time.perf_counter() - start) / len(sample)
    analytic = [entropy(structure_of(space, space.from_key(k))) for k in sample]
    sample_test = [table.rows[k]["test_acc"] for k in sample]
    out["measured"] = {"cells": len(sample), "seconds_per_cell": seconds,
                       "spearman_test": spearman(measured, sample_test),
                       "spearman_with_analytic": spearman(measured, analytic),
                       "analytic_spearman_test_same_cells": spearman(analytic, sample_test)}
    out["published"] = {"deepmad_entropy": None, "params": PUBLISHED_PARAMS_SPEARMAN}
    peers = RESULTS / "proxies.json"
    if peers.is_file():
        rows = json.loads(peers.read_text()).get("proxies", [])
        out["bench_proxies_json"] = {r["proxy"]: {"n": r["n"], "spearman_test":
                                                  r["spearman_test"]} for r in rows}
    for name, row in out["analytic"].items():
        print(f"   {name:28} rho {row['spearman_test']:.3f}  tau {row['kendall_test']:.3f}"
              f"  ({out['cells']} cells)")
    m = out["measured"]
    print(f"   deepmad_entropy (measured)   rho {m['spearman_test']:.3f} on {m['cells']} cells "
          f"(analytic on them {m['analytic_spearman_test_same_cells']:.3f}; measured vs "
          f"analytic {m['spearman_with_analytic']:.3f}; {m['seconds_per_cell']:.2f} s/cell)")
    return out


def deepmad_nb201_design(args: argparse.Namespace) -> dict:
    """DeepMAD's designs on NB201 (no training) at FLOPs budgets, looked up in the table:
    the design's test accuracy beside the best cell and random search within the budget, the
    best of the first 10 designs beside random search's best of 10 (expected over 2,000
    draws), and the solver's design beside the program's optimum by enumeration (quick: over
    2,000 cells)."""
    import numpy as np

    from nas.strategies import get_strategy
    from search_spaces import get_space
    from workers.tables import load_table

    table = load_table("nb201-cifar10")
    space = get_space("nb201")
    keys = sorted(table.rows)
    archs = [space.from_key(k) for k in keys]
    flops = np.array([space.flops(a) for a in archs], dtype=float)
    test = np.array([table.rows[k]["test_acc"] for k in keys])
    rng = np.random.default_rng(args.seed)
    rows = []
    for q in [0.5] if args.quick else [0.25, 0.5, 1.0]:
        budget = float(np.quantile(flops, q))
        strategy = get_strategy("deepmad", space, seed=args.seed, max_flops=budget)
        first = [space.key(strategy.ask()) for _ in range(10)]
        objective = {k: v for k, v in strategy.designs}
        pool = rng.permutation(len(archs))[:2000] if args.quick else range(len(archs))
        feasible = [int(i) for i in pool if strategy.feasible(archs[i])]
        optimum = max(feasible, key=lambda i: strategy.objective(archs[i]))
        by_key = {k: i for i, k in enumerate(keys)}
        draws = rng.choice(feasible, size=(2000, 10))
        rows.append({
            "flops_quantile": q, "flops_budget": budget, "feasible_cells": len(feasible),
            "design": first[0], "design_test_acc": float(test[by_key[first[0]]]),
            "best_of_10_designs_test_acc": float(max(test[by_key[k]] for k in first)),
            "best_cell_test_acc": float(test[feasible].max()),
            "random_mean_test_acc": float(test[feasible].mean()),
            "random_best_of_10_test_acc": float(test[draws].max(axis=1).mean()),
            "design_is_program_optimum": objective[first[0]]
            >= strategy.objective(archs[optimum]) - 1e-9,
            "design_percentile_in_budget": float((test[feasible] <= test[by_key[first[0]]])
                                                 .mean() * 100)})
        r = rows[-1]
        print(f"   FLOPs <= {budget / 1e6:.1f}M ({len(feasible)} cells): design "
              f"{r['design_test_acc']:.2f} (percentile {r['design_percentile_in_budget']:.0f}, "
              f"program optimum: {r['design_is_program_optimum']}), best of 10 designs "
              f"{r['best_of_10_designs_test_acc']:.2f}; random {r['random_mean_test_acc']:.2f}, "
              f"random best of 10 {r['random_best_of_10_test_acc']:.2f}; best cell "
              f"{r['best_cell_test_acc']:.2f}")
    return {"budgets": rows}


def _train_all(space, archs: list, seeds: list[int], quick: bool) -> list[list[float]]:
    """val_acc of each architecture trained with the `train` evaluator, one run per seed."""
    from workers.evaluators import get_evaluator

    data = {"kind": "digits", "limit": 400} if quick else "digits"
    out = []
    for arch in archs:
        accs = []
        for seed in seeds:
            evaluator = get_evaluator("train", space, dataset=data, epochs=1 if quick else 5,
                                      seed=seed, measure_latency=False, save_weights=False)
            accs.append(float(evaluator.evaluate(arch, space.key(arch)).metrics["val_acc"]))
        out.append(accs)
    return out


def _versus_random(space, budget: float, args: argparse.Namespace) -> dict:
    """One FLOPs budget: DeepMAD's design and `random` search's first proposals within it
    (both see the budget as a job constraint), each trained over the seeds."""
    import numpy as np

    from nas.strategies import Constraint, SearchContext, get_strategy
    from predictors.metrics import spearman

    context = SearchContext(
        constraints=(Constraint("flops", max=budget),),
        value_of=lambda k, m, d: float(space.flops(space.from_key(k))) if m == "flops" else None)
    seeds = list(range(1 if args.quick else 3))
    start = time.perf_counter()
    deepmad = get_strategy("deepmad", space, seed=args.seed)
    deepmad.bind(context)
    design = deepmad.ask()
    design_s = time.perf_counter() - start
    randoms = get_strategy("random", space, seed=args.seed)
    randoms.bind(context)
    picks = [randoms.ask() for _ in range(2 if args.quick else args.random_archs)]
    accs = _train_all(space, [design, *picks], seeds, args.quick)
    means = [float(np.mean(a)) for a in accs]
    best = 1 + int(np.argmax(means[1:]))
    objectives = [deepmad.objective(a) for a in (design, *picks)]
    out = {"flops_budget": budget, "seeds": seeds, "design_seconds": design_s,
           "deepmad": {"key": space.key(design), **deepmad.design_report(design),
                       "val_acc": _spread(accs[0])},
           "random": [{"key": space.key(a), "flops": float(space.flops(a)),
                       "objective": objectives[i + 1], "val_acc": _spread(accs[i + 1])}
                      for i, a in enumerate(picks)],
           "random_mean_over_archs": _spread(means[1:]),
           "random_search_best_of": {"archs": len(picks), "key": space.key(picks[best - 1]),
                                     "selected_on": "the same val_acc (optimistic)",
                                     "val_acc": _spread(accs[best])},
           "spearman_objective_val_acc": spearman(objectives, means)}
    d, r = out["deepmad"], out["random_mean_over_archs"]
    print(f"   budget {budget:.0f} FLOPs; DeepMAD {d['key']} ({d['flops']:.0f} FLOPs): val_acc "
          f"{d['val_acc']['mean']:.2f} +- {d['val_acc']['std']:.2f} over {len(seeds)} seeds")
    print(f"   random ({len(picks)} archs within budget): mean {r['mean']:.2f}, spread over "
          f"archs {r['min']:.2f}-{r['max']:.2f}; best of them {means[best]:.2f}; Spearman "
          f"objective/val_acc over the {len(means)} {out['spearman_objective_val_acc']:.2f}")
    return out


def deepmad_vs_random(args: argparse.Namespace) -> dict:
    """DeepMAD's design against random search at the same FLOPs budgets (quantiles of the
    space's FLOPs; quick: the median), both trained with the `train` evaluator on digits
    over several seeds."""
    import numpy as np

    from search_spaces import get_space

    space = get_space("mbconv", **DIGITS_MBCONV)
    rng = np.random.default_rng(args.seed)
    flops = [space.flops(space.sample(rng)) for _ in range(500)]
    quantiles = [0.5] if args.quick else args.budget_quantiles
    out: dict = {"space_args": DIGITS_MBCONV, "epochs": 1 if args.quick else 5,
                 "data": "digits (limit 400)" if args.quick else "digits",
                 "metric": "val_acc (the digits validation split)", "budgets": []}
    for q in quantiles:
        row = _versus_random(space, float(np.quantile(flops, q)), args)
        out["budgets"].append({"flops_quantile": q, **row})
    return out


# ---- As-ViT (helper H6) ----------------------------------------------------------------------
#: TE-NAS's NTK condition number on NB201 CIFAR-10 as other papers measured it (the figure
#: bench/proxies.py quotes; sign: a smaller condition number, a better cell). No published
#: NB201 number is quoted here for the linear-region count (TE-NAS shows it in a figure only).
ASVIT_PUBLISHED = {"ntk_condition_number": {"spearman": -0.54, "kendall": -0.37},
                   "linear_regions": None}
ASVIT_CELLS, ASVIT_QUICK_CELLS = 200, 3
#: Full mode stops scoring new cells after this long and reports on the cells scored so far
#: (the cache keeps them: a rerun goes on where it stopped).
ASVIT_MAX_SECONDS = 2400
ASVIT_CACHE = ROOT / "bench" / ".cache" / "asvit_nb201.jsonl"
#: The digits-sized `vit` space of section asvit_vs_random.
DIGITS_VIT = {"input_channels": 1, "input_size": 8, "patch_stride": 1, "stages": 3,
              "widths": [8, 16, 24, 32], "heads": [4, 8], "depths": [1, 2, 3],
              "ratios": [2, 3, 4]}


def _nb201_images(n: int = 20):
    """The first CIFAR-10 test images of ../shared/data, normalised (channel mean/std)."""
    import numpy as np
    import torch

    data = np.load(SHARED / "cifar10-test-first20.npz")
    x = torch.tensor(data["x"][:n], dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).reshape(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(data["y"][:n], dtype=torch.long)


def asvit_nb201(args: argparse.Namespace) -> dict:
    """Spearman / Kendall of As-ViT's two measures (te_ntk's condition number, linear_regions)
    with NB201 CIFAR-10 test accuracy on a seeded sample of cells (default NB201 network, 20
    CIFAR-10 test images, weights seeded), cached in bench/.cache (quick: 3 cells, no cache;
    full: 200 cells, or those scored within ASVIT_MAX_SECONDS)."""
    import numpy as np
    import torch

    from predictors.metrics import kendall_tau, spearman
    from predictors.proxies import compute_proxies
    from search_spaces import get_space
    from workers.tables import load_table

    table = load_table("nb201-cifar10")
    space = get_space("nb201")
    keys = sorted(table.rows)
    order = np.random.default_rng(args.seed + 201).permutation(len(keys))
    sample = [keys[i] for i in order[:ASVIT_QUICK_CELLS if args.quick else ASVIT_CELLS]]
    cache: dict[str, dict] = {}
    if not args.quick and ASVIT_CACHE.is_file():
        for line in ASVIT_CACHE.read_text().splitlines():
            row = json.loads(line)
            cache[row["key"]] = row
    batch = _nb201_images()
    torch.set_num_threads(1)
    start, scored = time.perf_counter(), 0
    for key in sample:
        if key in cache:
            continue
        if time.perf_counter() - start > ASVIT_MAX_SECONDS:
            break
        arch = space.from_key(key)
        scores = compute_proxies(lambda arch=arch: space.build(arch), batch,
                                 ["te_ntk", "linear_regions"], seed=args.seed)
        cache[key] = {"key": key, "ntk": -scores["te_ntk"], "lr": scores["linear_regions"]}
        scored += 1
        if not args.quick:
            ASVIT_CACHE.parent.mkdir(parents=True, exist_ok=True)
            with ASVIT_CACHE.open("a") as f:
                f.write(json.dumps(cache[key]) + "\n")
    seconds = (time.perf_counter() - start) / max(scored, 1)
    sample = [k for k in sample if k in cache]
    test = [table.rows[k]["test_acc"] for k in sample]
    out: dict = {"cells": len(sample), "scored_now": scored, "seconds_per_cell": seconds,
                 "published": ASVIT_PUBLISHED, "measures": {}}
    columns = {"ntk_condition_number": [cache[k]["ntk"] for k in sample],
               "linear_regions": [cache[k]["lr"] for k in sample],
               "params (peer)": [space.params(space.from_key(k)) for k in sample]}
    # As-ViT's combination: the sum of the two ranks (condition number ascending, regions
    # descending), negated so that larger is better
    ntk_rank = np.argsort(np.argsort(columns["ntk_condition_number"]))
    lr_rank = np.argsort(np.argsort([-v for v in columns["linear_regions"]]))
    columns["asvit rank sum (negated)"] = [-float(a + b) for a, b in zip(ntk_rank, lr_rank,
                                                                         strict=True)]
    for name, values in columns.items():
        row = {"spearman_test": spearman(values, test), "kendall_test": kendall_tau(values, test)}
        out["measures"][name] = row
        print(f"   {name:28} rho {row['spearman_test']:+.3f}  tau {row['kendall_test']:+.3f}"
              f"  ({len(sample)} cells)")
    print(f"   published (TE-NAS's NTK, other papers): rho -0.54, tau -0.37; "
          f"{seconds:.2f} s per cell scored now ({scored})")
    return out


def _random_at_flops(space, flops: float, count: int, rng, tolerance: float = 0.15) -> list:
    """`count` distinct random architectures within +-tolerance of `flops`."""
    picks: dict[str, dict] = {}
    for _ in range(200_000):
        if len(picks) >= count:
            break
        arch = space.sample(rng)
        if abs(space.flops(arch) - flops) <= tolerance * flops:
            picks.setdefault(space.key(arch), arch)
    return list(picks.values())


def asvit_vs_random(args: argparse.Namespace) -> dict:
    """As-ViT's seed topology and its scaled model (the `asvit` strategy, FLOPs budget: the
    median FLOPs of the space) against random ViTs of the same FLOPs (+-15%), all trained with
    the `train` evaluator on digits over several seeds."""
    import numpy as np
    import torch

    from nas.strategies import get_strategy
    from search_spaces import get_space

    torch.set_num_threads(1)
    space = get_space("vit", **DIGITS_VIT)
    rng = np.random.default_rng(args.seed)
    budget = float(np.median([space.flops(space.sample(rng)) for _ in range(500)]))
    start = time.perf_counter()
    strategy = get_strategy("asvit", space, seed=args.seed, steps=3 if args.quick else 40,
                            batch=4 if args.quick else 8, max_flops=budget)
    final = strategy.ask()
    design_s = time.perf_counter() - start
    seed_arch = space.from_key(strategy.report["seed"])
    seeds = [0] if args.quick else [0, 1, 2]
    per_design = 1 if args.quick else 3
    designs = {"scaled": final} if args.quick else {"scaled": final, "seed": seed_arch}
    out: dict = {"space_args": DIGITS_VIT, "flops_budget": budget, "seeds": seeds,
                 "epochs": 1 if args.quick else 5, "design_seconds": design_s,
                 "report": strategy.report, "designs": {}}
    for label, arch in designs.items():
        flops = float(space.flops(arch))
        randoms = _random_at_flops(space, flops, per_design, rng)
        accs = _train_all(space, [arch, *randoms], seeds, args.quick)
        per_random = [float(np.mean(a)) for a in accs[1:]]
        out["designs"][label] = {
            "key": space.key(arch), "flops": flops, "params": float(space.params(arch)),
            "val_acc": _spread(accs[0]),
            "random": [{"key": space.key(a), "flops": float(space.flops(a)),
                        "val_acc": _spread(acc)} for a, acc in zip(randoms, accs[1:],
                                                                   strict=True)],
            "random_mean_over_archs": _spread(per_random) if per_random else None}
        d = out["designs"][label]
        r = d["random_mean_over_archs"]
        print(f"   As-ViT {label} {d['key']} ({flops:.0f} FLOPs): val_acc "
              f"{d['val_acc']['mean']:.2f} +- {d['val_acc']['std']:.2f} over {len(seeds)} "
              f"seeds; random at +-15% FLOPs ({len(randoms)} archs): "
              + (f"mean {r['mean']:.2f}, {r['min']:.2f}-{r['max']:.2f}" if r else "none"))
    return out




# ---- driver ---------------------------------------------------------------------------------
#: Named sections in the order they run; each takes the parsed arguments, returns a dict.
SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "deepmad_nb201": deepmad_nb201,
    "deepmad_nb201_design": deepmad_nb201_design,
    "deepmad_vs_random": deepmad_vs_random,
    "asvit_nb201": asvit_nb201,
    "asvit_vs_random": asvit_vs_random,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: small samples, ~30 s in total, writes nothing")
    parser.add_argument("--sections", nargs="*", default=None, choices=list(SECTIONS),
                        help="run only these sections (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proxy-cells", type=int, default=200,
                        help="deepmad_nb201: NB201 cells the measured proxy scores")
    parser.add_argument("--random-archs", type=int, default=6,
                        help="deepmad_vs_random: random architectures trained per budget")
    parser.add_argument("--budget-quantiles", type=float, nargs="*", default=[0.25, 0.5],
                        help="deepmad_vs_random: FLOPs budgets, as quantiles of the space's")
    parser.add_argument("--json", default=None, help="results file (default: "
                        "bench/results/training_free.json; --quick: none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    names = args.sections or list(SECTIONS)
    result: dict = {"quick": args.quick, "cpu_count": os.cpu_count(), "sections": {}}
    for name in names:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        section = SECTIONS[name](args)
        section["wall_s"] = round(time.perf_counter() - start, 2)
        result["sections"][name] = section
        print(f"   ({section['wall_s']:.1f} s)", flush=True)
    result["load_average_1m"] = os.getloadavg()[0]
    out = args.json or (None if args.quick else str(RESULTS / "training_free.json"))
    if out:
        path = Path(out)
        if path.is_file() and args.sections:
            # Running some sections keeps the other sections' earlier results.
            old = json.loads(path.read_text()).get("sections", {})
            result["sections"] = {**old, **result["sections"]}
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
