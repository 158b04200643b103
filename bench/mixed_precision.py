"""Mixed precision that matters (EMQ) on the quant space, digits.

1. Labelled set: `predictors.emq.BASE_KEY` (4 searched blocks) with random per-block weight
   and activation bit-widths in {2, 4, 8} (and half as many again without 2-bit
   activations), each trained briefly (3 epochs) with quantization-aware training on
   digits; the label is the quantized validation accuracy (cached in
   bench/.cache/mixed_precision_labels.json). Plus configurations near the 4-bit budget (no
   2-bit activation, size and BitOPs within 1.5x of uniform w4a4), labels averaged over two
   training seeds, where the allocations at the 4-bit budgets choose.
2. EMQ proxy search: evolution of proxy programs over the quantized networks' statistics,
   fitness = Spearman with the quantized accuracy on the labelled configurations, once
   without the near-4-bit configurations ("before") and once with them ("after", the proxy
   used and stored: fixed before the results); both scored on held-out configurations
   (never seen by the evolution, overall and near 4 bits) next to peers: the hand-made
   proxies it was seeded with, and model size / BitOPs themselves.
3. Bit allocation: at the budgets of uniform w8a8, w4a8, w4a4 and w2a2 (each one's model size
   and BitOPs), at two budgets between w4a4 and w8a8 and one between w2a2 and w4a4, the EMQ
   allocation (`predictors.emq.allocate`: block sensitivities from the proxy, first and last
   blocks at >= 4 bits, no 2-bit activations unless forced, configurations that use the
   budget, the budget's uniform network added as a candidate, all re-scored by the proxy as
   a whole; below ~8 KiB no configuration keeps the first and last blocks at 4 bits, and
   there the rule is relaxed and the result says so); at w4a4 the same proxy's allocation
   with those rules off (the allocator before them: an ablation); a random mixed
   configuration within two of the budgets; every network trained 15 epochs with 5 seeds
   (the same QAT for uniform and mixed). It lists the allocations a uniform network beats
   at no more size.

    python bench/mixed_precision.py            # full: writes bench/results/mixed_precision.json
                                               # and stores the proxy as `emq`
    python bench/mixed_precision.py --quick    # CI smoke (< 30 s): tiny, temporary folder
    python bench/mixed_precision.py --nb201-quantiles 200   # the stored proxy's reference
        # quantiles on random NB201 cells (bench/proxies.py's setting), for predictors/combine.py

The full run stores the best formula in predictors/data/emq_proxies.json (proxy `emq`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / ".cache" / "mixed_precision_labels.json"
#: `epochs`: the short QAT of the labelled set (the proxy's fitness); `final_epochs`: the
#: QAT of the compared networks, the same for uniform and mixed (fixed before the results).
#: `region_*`: labelled configurations near the 4-bit budget (no 2-bit activation, size and
#: BitOPs within `region_factor` of uniform w4a4), labels averaged over `region_label_seeds`.
#: `uniform`: the uniform (weight, activation) bits whose networks and budgets are compared;
#: `between`: (low, high, t) budgets a fraction t of the way from the uniform network low's
#: size and BitOPs to high's.
FULL = {"train_configs": 48, "held_out": 24, "epochs": 3, "batch_size": 64, "steps": 2000,
        "population": 32, "region_train": 36, "region_held_out": 24, "region_factor": 1.5,
        "region_label_seeds": [0, 1], "final_epochs": 15, "seeds": [0, 1, 2, 3, 4],
        "train_limit": None, "proxy_batch": 64, "uniform": [[8, 8], [4, 8], [4, 4], [2, 2]],
        "between": [["w4a4", "w8a8", 1 / 3], ["w4a4", "w8a8", 2 / 3], ["w2a2", "w4a4", 0.5]],
        "random_peer": ["w4a4", "w4a4-w8a8-0.67"], "no_rules": ["w4a4"], "shortlist": 48,
        "rerank_seeds": 3}
QUICK = {"train_configs": 4, "held_out": 3, "epochs": 2, "batch_size": 32, "steps": 60,
         "population": 8, "region_train": 3, "region_held_out": 3, "region_factor": 1.5,
         "region_label_seeds": [0], "final_epochs": 2, "seeds": [0], "train_limit": 500,
         "proxy_batch": 32, "uniform": [[4, 4]], "between": [], "random_peer": [],
         "no_rules": [],
         "shortlist": 2, "rerank_seeds": 1}


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _data(limit: int | None):
    from workers.datasets import parse_dataset

    data = parse_dataset("digits").load()
    if limit:
        data = dataclasses.replace(data, x_train=data.x_train[:limit],
                                   y_train=data.y_train[:limit])
    return data


def _proxy_batch(data, n: int):
    import torch

    return (torch.as_tensor(data.x_train[:n], dtype=torch.float32),
            torch.as_tensor(data.y_train[:n], dtype=torch.long))


def _region_sample(space, base, n, rng, exclude, factor):
    """`n` configurations near the uniform 4-bit budget: no 2-bit activation, model size and
    BitOPs within `factor` of uniform w4a4 (either way)."""
    from predictors import emq

    w4a4 = emq.with_bits(base, [(4, 4)] * len(base["layers"]))
    size, bitops = space.model_size_kb(w4a4), space.bitops(w4a4)
    no_a2 = [p for p in emq.bit_pairs() if p[1] > 2]
    out, seen = [], set(exclude)
    while len(out) < n:
        (arch,) = emq.sample_configs(space, base, 1, rng, exclude=seen, pairs=no_a2)
        seen.add(space.key(arch))
        if (1 / factor <= space.model_size_kb(arch) / size <= factor
                and 1 / factor <= space.bitops(arch) / bitops <= factor):
            out.append(arch)
    return out


def _labels(space, archs, data, cfg, cache, seeds) -> tuple[list[float], list[list[float]]]:
    """Mean label over `seeds` and the per-seed labels."""
    from predictors import emq
    from workers.training import TrainConfig

    runs = [emq.train_labels(space, archs, data,
                             TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                                         bn_recalibration=0, seed=seed), cache)
            for seed in seeds]
    return [statistics.fmean(v) for v in zip(*runs, strict=True)], runs


def proxy_search(space, base, data, batch, cfg, cache) -> dict:
    """Two EMQ proxy searches: on the original labelled set ("before") and on it plus
    configurations near the 4-bit budget ("after", the one used: fixed before the results);
    both scored on the same held-out sets."""
    from predictors import emq, evolved

    lab = emq.sample_configs(space, base, cfg["train_configs"], np.random.default_rng(0))
    held = emq.sample_configs(space, base, cfg["held_out"], np.random.default_rng(1),
                              exclude={space.key(a) for a in lab})
    # a third more without 2-bit activations (most uniform draws hold one somewhere)
    no_a2 = [p for p in emq.bit_pairs() if p[1] > 2]
    seen = {space.key(a) for a in lab + held}
    lab += emq.sample_configs(space, base, cfg["train_configs"] // 2, np.random.default_rng(2),
                              exclude=seen, pairs=no_a2)
    seen |= {space.key(a) for a in lab}
    held += emq.sample_configs(space, base, cfg["held_out"] // 2, np.random.default_rng(3),
                               exclude=seen, pairs=no_a2)
    seen |= {space.key(a) for a in held}
    region_held = _region_sample(space, base, cfg["region_held_out"], np.random.default_rng(4),
                                 seen, cfg["region_factor"])
    seen |= {space.key(a) for a in region_held}
    region_lab = _region_sample(space, base, cfg["region_train"], np.random.default_rng(5),
                                seen, cfg["region_factor"])
    start = time.perf_counter()
    lab_acc, _ = _labels(space, lab, data, cfg, cache, [0])
    held_acc, _ = _labels(space, held, data, cfg, cache, [0])
    region_seeds = cfg["region_label_seeds"]
    region_lab_acc, _ = _labels(space, region_lab, data, cfg, cache, region_seeds)
    region_held_acc, region_held_runs = _labels(space, region_held, data, cfg, cache,
                                                region_seeds)
    label_s = time.perf_counter() - start
    start = time.perf_counter()
    lab_stats = [emq.quantized_stats(space, a, batch) for a in lab]
    held_stats = [emq.quantized_stats(space, a, batch) for a in held]
    region_lab_stats = [emq.quantized_stats(space, a, batch) for a in region_lab]
    region_held_stats = [emq.quantized_stats(space, a, batch) for a in region_held]
    stats_s = time.perf_counter() - start
    held_batch = evolved.StatsBatch(held_stats)
    region_batch = evolved.StatsBatch(region_held_stats)
    good = [i for i, a in enumerate(held) if all(la["abits"] > 2 for la in a["layers"])]

    def scores(formula) -> dict:
        held_values = held_batch.evaluate(formula)
        return {"held_out_spearman": emq.spearman(held_values, held_acc),
                "held_out_spearman_without_2bit_activations": emq.spearman(
                    held_values[good], [held_acc[i] for i in good]),
                "near_4bit_held_out_spearman": emq.spearman(region_batch.evaluate(formula),
                                                            region_held_acc)}

    runs, formulas = {}, {}
    for name, stats, labels in (("before", lab_stats, lab_acc),
                                ("after", lab_stats + region_lab_stats,
                                 lab_acc + region_lab_acc)):
        start = time.perf_counter()
        result = emq.evolve_emq(stats, labels, steps=cfg["steps"],
                                population=cfg["population"], seed=0)
        formulas[name] = result.best
        runs[name] = {"expression": str(result.best), "train_configs": len(labels),
                      "fitness_spearman_train": result.best_fitness, **scores(result.best),
                      "formulas_evaluated": result.evaluated,
                      "evolution_seconds": time.perf_counter() - start}

    def peer_rho(values, labels) -> float:
        return emq.spearman(values, labels)

    peers = {name: scores(f) for name, f in evolved.SEED_FORMULAS.items()}
    for metric in ("model_size_kb", "bitops"):
        fn = getattr(space, metric)
        peers[metric] = {
            "held_out_spearman": peer_rho([fn(a) for a in held], held_acc),
            "near_4bit_held_out_spearman": peer_rho([fn(a) for a in region_held],
                                                    region_held_acc)}
    ceiling = (peer_rho(*region_held_runs) if len(region_held_runs) > 1 else None)
    return {
        "formula": formulas["after"], **runs["after"], "before_region_weighting": runs["before"],
        "held_out_peers": peers, "held_out_without_2bit_activations": len(good),
        "held_out_configs": len(held), "near_4bit_held_out_configs": len(region_held),
        "near_4bit_label_seed_spearman": ceiling,
        "accuracy_range": [min(lab_acc + held_acc), max(lab_acc + held_acc)],
        "near_4bit_accuracy_range": [min(region_lab_acc + region_held_acc),
                                     max(region_lab_acc + region_held_acc)],
        "seconds": {"labels": label_s, "stats": stats_s},
    }


def _train(space, arch, data, cfg: dict, memo: dict) -> list[float]:
    """Accuracy per seed after `final_epochs` of QAT (memoised by key: a budget whose
    allocation is a uniform network reuses that network's runs)."""
    import torch

    from workers.training import TrainConfig, train_model

    key = space.key(arch)
    if key not in memo:
        accs = []
        for seed in cfg["seeds"]:
            torch.manual_seed(seed)
            config = TrainConfig(epochs=cfg["final_epochs"], batch_size=cfg["batch_size"],
                                 bn_recalibration=0, seed=seed)
            accs.append(float(train_model(space.build(arch), data, config).val_acc))
        memo[key] = accs
    return memo[key]


def _random_within(space, base, size_kb, bitops, rng):
    from predictors import emq

    pairs = emq.bit_pairs()
    for _ in range(10_000):
        config = [pairs[i] for i in rng.integers(len(pairs), size=len(base["layers"]))]
        arch = emq.with_bits(base, config)
        if space.model_size_kb(arch) <= size_kb + 1e-9 and space.bitops(arch) <= bitops:
            return arch
    raise RuntimeError("no random configuration within the budgets")


def _budgets(space, base, cfg) -> dict[str, dict]:
    """Named budgets: each uniform network's size and BitOPs, and the `between` points."""
    from predictors import emq

    out = {}
    for w, a in cfg["uniform"]:
        arch = emq.with_bits(base, [(w, a)] * len(base["layers"]))
        out[f"w{w}a{a}"] = {"model_size_kb": space.model_size_kb(arch),
                            "bitops": space.bitops(arch), "uniform": arch}
    for low, high, t in cfg["between"]:
        out[f"{low}-{high}-{t:.2f}"] = {
            metric: out[low][metric] + t * (out[high][metric] - out[low][metric])
            for metric in ("model_size_kb", "bitops")}
    return out


def _row(space, arch, accs) -> dict:
    return {"key": space.key(arch), "model_size_kb": space.model_size_kb(arch),
            "bitops": space.bitops(arch), "val_acc": _spread(accs), "val_acc_runs": accs}


def allocation(space, base, data, batch, formula, cfg) -> dict:
    """Per budget: the uniform network (where the budget is one), the EMQ allocation
    (`predictors.emq.allocate`, default rules, the budget's uniform network included as a
    candidate), and for `random_peer` budgets a random configuration within the budget;
    each trained `final_epochs` with every seed."""
    from predictors import emq
    from search_spaces.quant import BITS

    start = time.perf_counter()
    gains = emq.sensitivities(formula, space, base, batch, seeds=range(cfg["rerank_seeds"]))
    sens_s = time.perf_counter() - start
    rows, memo = {}, {}
    rng = np.random.default_rng(7)
    for name, budget in _budgets(space, base, cfg).items():
        size, bitops = budget["model_size_kb"], budget["bitops"]
        entry = {"budget": {"model_size_kb": size, "bitops": bitops}}
        uniform = budget.get("uniform")
        if uniform is not None:
            entry["uniform"] = _row(space, uniform, _train(space, uniform, data, cfg, memo))
        start = time.perf_counter()
        found, relaxed = None, None
        for edge in (emq.EDGE_MIN_BITS, min(BITS)):  # the edge rule yields only if it must
            try:
                found = emq.allocate(formula, space, base, gains, batch, max_size_kb=size,
                                     max_bitops=bitops, shortlist=cfg["shortlist"],
                                     seeds=range(cfg["rerank_seeds"]), edge_min_bits=edge,
                                     include=[uniform] if uniform is not None else [])
                break
            except ValueError as err:
                relaxed = str(err)
        if found is None:
            entry["emq_mixed"] = {"infeasible": relaxed}
        else:
            mixed = found["arch"]
            entry["emq_mixed"] = {**_row(space, mixed, _train(space, mixed, data, cfg, memo)),
                                  "edge_rule_relaxed": relaxed,
                                  "candidates": found["candidates"],
                                  "is_uniform": uniform is not None
                                  and space.key(mixed) == space.key(uniform),
                                  "proxy_ranking": found["ranking"][:8]}
        entry["allocation_seconds"] = time.perf_counter() - start
        if name in cfg["no_rules"]:  # ablation: the same proxy, the allocator's rules off
            plain = emq.allocate(formula, space, base, gains, batch, max_size_kb=size,
                                 max_bitops=bitops, shortlist=cfg["shortlist"],
                                 seeds=range(cfg["rerank_seeds"]), edge_min_bits=min(BITS),
                                 avoid_2bit_activations=False, maximal=False)["arch"]
            entry["emq_mixed_no_rules"] = _row(space, plain,
                                               _train(space, plain, data, cfg, memo))
        if name in cfg["random_peer"]:
            peer = _random_within(space, base, size, bitops, rng)
            entry["random_mixed"] = _row(space, peer, _train(space, peer, data, cfg, memo))
        rows[name] = entry
    return {"budgets": rows, "sensitivity_seconds": sens_s,
            "dominated": _dominated(rows)}


def _dominated(rows: dict) -> list[dict]:
    """The EMQ allocations that some uniform network beats on mean accuracy at no more
    model size (the goal: none), with the margin and whether it exceeds twice its standard
    error (sd/sqrt(n) of both means)."""
    uniform = {name: r["uniform"] for name, r in rows.items() if "uniform" in r}
    out = []
    for name, entry in rows.items():
        mixed = entry["emq_mixed"]
        if "key" not in mixed:
            continue
        for u_name, u in uniform.items():
            margin = u["val_acc"]["mean"] - mixed["val_acc"]["mean"]
            if (u["model_size_kb"] <= mixed["model_size_kb"] + 1e-9 and margin > 1e-6
                    and u["key"] != mixed["key"]):
                se = (u["val_acc"]["std"] ** 2 / u["val_acc"]["n"]
                      + mixed["val_acc"]["std"] ** 2 / mixed["val_acc"]["n"]) ** 0.5
                out.append({"budget": name, "mixed": mixed["key"], "by": u_name,
                            "by_key": u["key"], "by_bitops": u["bitops"],
                            "margin": margin, "significant": margin > 2 * se})
    return out


def nb201_quantiles(n: int) -> list[float]:
    """The 0%, 5%, ..., 100% quantiles of the transformed `emq` score over `n` random NB201
    cells, scored as bench/proxies.py scores (the proxy evaluator, 16 channels, 5 cells per
    stage, the 20 CIFAR-10 test images, seed 0)."""
    import torch

    from predictors import combine
    from search_spaces import get_space
    from workers.evaluators.proxy import ProxyEvaluator

    torch.set_num_threads(1)
    images = ROOT.parent / "shared" / "data" / "cifar10-test-first20.npz"
    evaluator = ProxyEvaluator(get_space("nb201"), proxies=["emq", "params"],
                               dataset=f"npz:{images}",
                               batch_size=20, seed=0)
    rng = np.random.default_rng(0)
    values = [combine.transform("emq", evaluator.compute(evaluator.space.sample(rng),
                                                         ["emq"])["emq"]) for _ in range(n)]
    return [float(f"{q:.6g}") for q in np.quantile(values, np.linspace(0, 1, 21))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run (< 30 s)")
    parser.add_argument("--nb201-quantiles", type=int, default=0, metavar="N",
                        help="only print the stored proxy's NB201 reference quantiles")
    args = parser.parse_args()
    if args.nb201_quantiles:
        print(json.dumps(nb201_quantiles(args.nb201_quantiles)))
        return
    import torch

    from predictors import emq
    from search_spaces.quant import QuantSpace

    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    out_dir = Path(tempfile.mkdtemp(prefix="mixed_precision_")) if args.quick else RESULTS
    cache = out_dir / "labels.json" if args.quick else CACHE
    began = time.perf_counter()
    space = QuantSpace(**emq.SPACE_ARGS)
    base = space.from_key(emq.BASE_KEY)
    data = _data(cfg["train_limit"])
    batch = _proxy_batch(data, cfg["proxy_batch"])
    search = proxy_search(space, base, data, batch, cfg, cache)
    formula = search.pop("formula")
    before = search["before_region_weighting"]
    print(f"EMQ proxy {search['expression']}")
    print(f"  Spearman with quantized accuracy: train {search['fitness_spearman_train']:.3f}, "
          f"held-out {search['held_out_spearman']:.3f} ({search['held_out_configs']} configs), "
          f"near 4-bit {search['near_4bit_held_out_spearman']:.3f} "
          f"({search['near_4bit_held_out_configs']} configs; label seed-to-seed "
          f"{search['near_4bit_label_seed_spearman'] or float('nan'):.3f})")
    print(f"  before weighting toward 4 bits: {before['expression']}: held-out "
          f"{before['held_out_spearman']:.3f}, near 4-bit "
          f"{before['near_4bit_held_out_spearman']:.3f}")
    print("  peers held-out / near 4-bit: " + ", ".join(
        f"{k} {v['held_out_spearman']:.3f}/{v['near_4bit_held_out_spearman']:.3f}"
        for k, v in search["held_out_peers"].items()))
    alloc = allocation(space, base, data, batch, formula, cfg)
    for budget, entry in alloc["budgets"].items():
        print(f"budget {budget}: {entry['budget']['model_size_kb']:.2f} KiB, "
              f"{entry['budget']['bitops'] / 1e6:.1f} MBitOPs")
        for name in ("uniform", "emq_mixed", "emq_mixed_no_rules", "random_mixed"):
            row = entry.get(name)
            if row is None:
                continue
            if "key" not in row:
                print(f"  {name:18s} {row['infeasible']}")
                continue
            acc = row["val_acc"]
            print(f"  {name:18s} {row['key']:70s} {row['model_size_kb']:6.2f} KiB "
                  f"{row['bitops'] / 1e6:6.1f} MBitOPs  acc {acc['mean']:.2f} +- {acc['std']:.2f}"
                  f"  {' '.join(f'{v:.2f}' for v in row['val_acc_runs'])}")
    print("EMQ allocations dominated by a uniform network (mean accuracy, no more size): "
          + ("; ".join(f"{d['budget']} by uniform {d['by']} (+{d['margin']:.2f}"
                       f"{', > 2 se' if d['significant'] else ', < 2 se'})"
                       for d in alloc["dominated"]) or "none"))
    result = {"mode": "quick" if args.quick else "full", "date": "2026-12-05", "config": cfg,
              "space_args": emq.SPACE_ARGS, "base_key": emq.BASE_KEY, "proxy": search,
              "allocation": alloc, "seconds": time.perf_counter() - began,
              "machine": f"{platform.machine()}, {platform.python_version()}, torch "
                         f"{torch.__version__}, 1 thread, CPU shared with other jobs"}
    path = out_dir / "mixed_precision.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    if not args.quick:
        emq.save_emq_formula("emq", formula, held_out_spearman=search["held_out_spearman"],
                             fitness_spearman_train=search["fitness_spearman_train"],
                             near_4bit_held_out_spearman=search["near_4bit_held_out_spearman"],
                             source="bench/mixed_precision.py", date="2026-12-05")
    print(f"wrote {path} in {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
