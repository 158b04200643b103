"""Mixed precision that matters (EMQ) on the quant space, digits.

1. Labelled set: `predictors.emq.BASE_KEY` (4 searched blocks) with random per-block weight
   and activation bit-widths in {2, 4, 8} (and half as many again without 2-bit
   activations), each trained briefly with quantization-aware training on digits; the label
   is the quantized validation accuracy (cached in bench/.cache/mixed_precision_labels.json).
2. EMQ proxy search: evolution of proxy programs over the quantized networks' statistics,
   fitness = Spearman with the quantized accuracy on the labelled configurations; the best is
   scored on held-out configurations (never seen by the evolution) next to peers: the
   hand-made proxies it was seeded with, and model size / BitOPs themselves.
3. Bit allocation: for the budgets of uniform 8-bit and uniform 4-bit (w8a8, w4a4: the same
   model size and BitOPs), the EMQ allocation (block sensitivities from the proxy, the best
   configurations within the budgets, re-scored by the proxy as a whole) and a random mixed
   configuration within the same budgets, each trained with several seeds against the
   uniform network itself.

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
FULL = {"train_configs": 48, "held_out": 24, "epochs": 3, "batch_size": 64, "steps": 2000,
        "population": 32, "seeds": [0, 1, 2], "train_limit": None, "proxy_batch": 64,
        "budgets": [8, 4], "random_peer": True, "shortlist": 48, "rerank_seeds": 3}
QUICK = {"train_configs": 4, "held_out": 3, "epochs": 2, "batch_size": 32, "steps": 60,
         "population": 8, "seeds": [0], "train_limit": 500, "proxy_batch": 32, "budgets": [4],
         "random_peer": False, "shortlist": 2, "rerank_seeds": 1}


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


def proxy_search(space, base, data, batch, cfg, cache) -> dict:
    from predictors import emq, evolved
    from workers.training import TrainConfig

    train_cfg = TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                            bn_recalibration=0, seed=0)
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
    start = time.perf_counter()
    lab_acc = emq.train_labels(space, lab, data, train_cfg, cache)
    held_acc = emq.train_labels(space, held, data, train_cfg, cache)
    label_s = time.perf_counter() - start
    start = time.perf_counter()
    lab_stats = [emq.quantized_stats(space, a, batch) for a in lab]
    held_stats = [emq.quantized_stats(space, a, batch) for a in held]
    stats_s = time.perf_counter() - start
    start = time.perf_counter()
    result = emq.evolve_emq(lab_stats, lab_acc, steps=cfg["steps"],
                            population=cfg["population"], seed=0)
    evolve_s = time.perf_counter() - start
    held_batch = evolved.StatsBatch(held_stats)

    def held_rho(formula) -> float:
        return emq.spearman(held_batch.evaluate(formula), held_acc)

    peers = {name: held_rho(f) for name, f in evolved.SEED_FORMULAS.items()}
    peers["model_size_kb"] = emq.spearman([space.model_size_kb(a) for a in held], held_acc)
    peers["bitops"] = emq.spearman([space.bitops(a) for a in held], held_acc)
    good = [i for i, a in enumerate(held) if all(la["abits"] > 2 for la in a["layers"])]
    no_a2_rho = emq.spearman(held_batch.evaluate(result.best)[good], [held_acc[i] for i in good])
    return {
        "formula": result.best, "expression": str(result.best),
        "fitness_spearman_train": result.best_fitness,
        "held_out_spearman": held_rho(result.best), "held_out_peers": peers,
        "held_out_spearman_without_2bit_activations": no_a2_rho,
        "held_out_without_2bit_activations": len(good),
        "train_configs": len(lab), "held_out_configs": len(held),
        "accuracy_range": [min(lab_acc + held_acc), max(lab_acc + held_acc)],
        "formulas_evaluated": result.evaluated,
        "seconds": {"labels": label_s, "stats": stats_s, "evolution": evolve_s},
    }


def _train(space, arch, data, cfg: dict) -> list[float]:
    import torch

    from workers.training import TrainConfig, train_model

    accs = []
    for seed in cfg["seeds"]:
        torch.manual_seed(seed)
        config = TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                             bn_recalibration=0, seed=seed)
        accs.append(float(train_model(space.build(arch), data, config).val_acc))
    return accs


def _random_within(space, base, size_kb, bitops, rng):
    from predictors import emq

    pairs = emq.bit_pairs()
    for _ in range(10_000):
        config = [pairs[i] for i in rng.integers(len(pairs), size=len(base["layers"]))]
        arch = emq.with_bits(base, config)
        if space.model_size_kb(arch) <= size_kb + 1e-9 and space.bitops(arch) <= bitops:
            return arch
    raise RuntimeError("no random configuration within the budgets")


def allocation(space, base, data, batch, formula, cfg) -> dict:
    from predictors import emq

    start = time.perf_counter()
    gains = emq.sensitivities(formula, space, base, batch, seeds=range(cfg["rerank_seeds"]))
    sens_s = time.perf_counter() - start
    rows = {}
    rng = np.random.default_rng(7)
    for bits in cfg["budgets"]:
        uniform = emq.with_bits(base, [(bits, bits)] * len(base["layers"]))
        size, bitops = space.model_size_kb(uniform), space.bitops(uniform)
        start = time.perf_counter()
        shortlist = emq.allocate_bits(space, base, gains, max_size_kb=size,
                                      max_bitops=bitops, top=cfg["shortlist"])
        mixed = emq.rerank(formula, space, shortlist, batch, seeds=range(cfg["rerank_seeds"]))
        alloc_s = time.perf_counter() - start
        contenders = [("uniform", uniform), ("emq_mixed", mixed)]
        if cfg["random_peer"]:
            contenders.append(("random_mixed", _random_within(space, base, size, bitops, rng)))
        entry = {}
        for name, arch in contenders:
            accs = _train(space, arch, data, cfg)
            entry[name] = {"key": space.key(arch), "model_size_kb": space.model_size_kb(arch),
                           "bitops": space.bitops(arch), "val_acc": _spread(accs),
                           "val_acc_runs": accs}
        entry["budget"] = {"model_size_kb": size, "bitops": bitops}
        entry["allocation_seconds"] = alloc_s
        rows[f"w{bits}a{bits}"] = entry
    return {"budgets": rows, "sensitivity_seconds": sens_s}


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
    print(f"EMQ proxy {search['expression']}")
    print(f"  Spearman with quantized accuracy: train {search['fitness_spearman_train']:.3f}, "
          f"held-out {search['held_out_spearman']:.3f} ({search['held_out_configs']} configs); "
          "peers held-out: " + ", ".join(f"{k} {v:.3f}"
                                         for k, v in search["held_out_peers"].items()))
    alloc = allocation(space, base, data, batch, formula, cfg)
    for budget, entry in alloc["budgets"].items():
        print(f"budget {budget}: {entry['budget']['model_size_kb']:.2f} KiB, "
              f"{entry['budget']['bitops'] / 1e6:.1f} MBitOPs")
        for name in ("uniform", "emq_mixed", "random_mixed"):
            if name not in entry:
                continue
            row = entry[name]
            acc = row["val_acc"]
            print(f"  {name:13s} {row['key']:70s} {row['model_size_kb']:6.2f} KiB "
                  f"{row['bitops'] / 1e6:6.1f} MBitOPs  acc {acc['mean']:.2f} +- {acc['std']:.2f}")
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
                             source="bench/mixed_precision.py", date="2026-12-05")
    print(f"wrote {path} in {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
