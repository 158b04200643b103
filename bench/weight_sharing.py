"""DARTS-family weight-sharing searches: cost of a search step, derived cells, FBNet budget.

1. darts vs pc-darts (K=4) on the `darts` space, CIFAR-shaped input (3x32x32, random pixels:
   content does not change cost), the same batch size: the memory of one search step and the
   median step time (an architecture step and a weight step). Memory on CUDA is
   `torch.cuda.max_memory_allocated` over a step; on CPU, where no allocator statistic
   exists for torch, it is the bytes of the tensors autograd saves for the backward pass
   during one training forward (`torch.autograd.graph.saved_tensors_hooks`, each storage
   counted once, parameters excluded): the activation memory, which is what partial
   channels shrink and what dominates a search step's peak.
2. nb201 on `digits`: the cell each of darts (1st order), darts (2nd order), pc-darts and
   rarts derives, its skip-connection count per epoch (collapse to skip connections is the
   known DARTS failure) and its NAS-Bench-201 CIFAR-10 test accuracy from the shipped table
   (a proxy task: the search trains on 8x8 digits, the table is CIFAR-10).
3. fbnet: the per-op latency table measured on this CPU (`workers.latency_lut`, the full
   NAS-Bench-201 network, batch 1, one thread), a budget (30% of the way from the fastest
   to the slowest cell), and for a run with the latency penalty and one without it the
   derived and the argmax cell's table latency and latency measured on this CPU
   (`workers.latency.measure_latency_ms`).
4. tas on `digits` (`bench_tas`): an mbconv network (3 stages of up to 3 blocks, expand
   ratios 1..6, all at 6) pruned by TAS to the FLOPs of uniform width pruning (every block at
   expand 2, or 3, full depth), both distilled from the same trained teacher the same way
   (`TASSearch.distill`): validation accuracy drop from the teacher, over several seeds
   (mean, sd and the paired TAS - uniform difference). Also written alone to
   bench/results/weight_sharing_tas.json; `--only tas` runs just this section.
5. data-parallel ranks (`bench_ranks`, `strategy_args.workers`): each method on 1 rank (in
   process) and on 2 Ray Train ranks (gloo, one CPU each) with the same global batch:
   seconds per epoch (median and spread over the epochs; the ranks' start-up is in the wall
   time only), and how far 2 ranks end from 1 (max |difference| of the architecture
   parameters, or of the supernet weights for oneshot; the same derived architectures?),
   beside a control: 1 rank through the data-parallel code path on a 1-process gloo group
   (the global-batch BatchNorm's and the all-reduces' arithmetic, no data split), which
   shows how far floating-point order alone moves the same search.
   Also written alone to bench/results/weight_sharing_ranks.json; `--only ranks` runs it.
6. fbnetv5 on `digits` (`bench_fbnetv5`): one multi-task search over three tasks (digit
   class, parity, closed loops) against one single-task search per task with the same
   settings (epochs, samples, batch: the same budget per task) and a uniformly random
   architecture, per seed; each found architecture trained from scratch on its task (mean of
   `train_seeds` inits); mean and sd over seeds of that stand-alone accuracy, and the cost:
   seconds (wall and training) and supernet passes of the one run against the T runs.
   Also written alone to bench/results/weight_sharing_fbnetv5.json; `--only fbnetv5`.

    python bench/weight_sharing.py           # full (< 20 min on 2 shared CPU cores)
    python bench/weight_sharing.py --quick   # CI smoke test (< 60 s)

Writes bench/results/weight_sharing.json (`--quick`: a fresh temporary folder).
"""

from __future__ import annotations

import argparse
import json
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
import torch  # noqa: E402

from search_spaces import get_space  # noqa: E402
from workers.latency import measure_latency_ms  # noqa: E402
from workers.latency_lut import measure_nb201_lut, predict_from_lut  # noqa: E402
from workers.tables import load_table  # noqa: E402
from workers.weight_sharing import get_search  # noqa: E402
from workers.weight_sharing.mixed import nb201_ranked  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FULL = {"step": {"channels": 8, "cells": 5, "batch": 32, "steps": 5},
        "nb201": {"epochs": 30, "limit": None, "channels": 8, "cells": 1, "batch": 64},
        "fbnet": {"epochs": 30, "budget_fraction": 0.3}}
QUICK = {"step": {"channels": 8, "cells": 3, "batch": 16, "steps": 2},
         "nb201": {"epochs": 2, "limit": 200, "channels": 8, "cells": 1, "batch": 64},
         "fbnet": {"epochs": 2, "budget_fraction": 0.3}}
#: Section 4 (TAS): the network to prune and the uniform pruning it is compared with.
TAS_SPACE = {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24, 32],
             "stage_strides": [2, 2, 1], "stem_channels": 16, "head_channels": 64,
             "depths": [1, 2, 3], "kernel_sizes": [3], "expand_ratios": [1, 2, 3, 4, 5, 6],
             "width_mults": [1.0]}
TAS_FULL = {"seeds": [0, 1, 2], "uniform_expands": [1, 2, 3], "limit": None, "teacher_epochs": 6,
            "epochs": 10, "kd_epochs": 6, "batch_size": 64, "arch_lr": 0.05}
TAS_QUICK = {"seeds": [0], "uniform_expands": [3], "limit": 300, "teacher_epochs": 1,
             "epochs": 1, "kd_epochs": 1, "batch_size": 64, "arch_lr": 0.05}
NB201_METHODS = {"darts-1st": ("darts", {"order": 1}), "darts-2nd": ("darts", {"order": 2}),
                 "pc-darts": ("pc-darts", {"k": 4}), "rarts": ("rarts", {})}


# ---- 1. step memory and time ---------------------------------------------------------------
def saved_activation_bytes(search) -> int:
    """Bytes autograd keeps for backward during one training forward (unique storages,
    parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in search.net.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    x, y = search.split_w[0][:search.batch_size], search.split_w[1][:search.batch_size]
    search.net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = search.criterion(search.net(x, search.arch.op_weights(),
                                           search.arch.edge_weights()), y)
    loss.backward()
    search.net.zero_grad(set_to_none=True)
    return sum(seen.values())


def step_cost(name: str, kwargs: dict, settings: dict, data: dict) -> dict:
    search = get_search(name, get_space("darts"), dataset=data, epochs=1,
                        batch_size=settings["batch"], channels=settings["channels"],
                        cells=settings["cells"], **kwargs)
    search.prepare()
    b = settings["batch"]
    xw, yw = search.split_w[0][:b], search.split_w[1][:b]
    xa, ya = search.split_a[0][:b], search.split_a[1][:b]
    cuda = search.device.type == "cuda"
    search.search_step(xw, yw, xa, ya)  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(settings["steps"]):
        start = time.perf_counter()
        search.search_step(xw, yw, xa, ya)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    memory = torch.cuda.max_memory_allocated() if cuda else saved_activation_bytes(search)
    params = sum(p.numel() * p.element_size() for p in search.net.parameters())
    return {"step_seconds_median": statistics.median(times), "step_seconds": times,
            "memory_bytes": memory, "memory_method": "cuda.max_memory_allocated" if cuda
            else "saved tensors of one training forward (CPU)",
            "param_bytes": params, "device": str(search.device)}


def bench_steps(settings: dict, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    n = 4 * settings["batch"] + 8
    path = folder / "cifar-shaped.npz"
    np.savez(path, x=rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 10, size=n))
    data = {"kind": "npz", "path": str(path)}
    out = {"darts": step_cost("darts", {"order": 1}, settings, data),
           "pc-darts": step_cost("pc-darts", {"k": 4}, settings, data)}
    out["ratio"] = {
        "memory": out["pc-darts"]["memory_bytes"] / out["darts"]["memory_bytes"],
        "step_time": (out["pc-darts"]["step_seconds_median"]
                      / out["darts"]["step_seconds_median"])}
    return out


# ---- 2. nb201 cells -----------------------------------------------------------------------
def bench_nb201(settings: dict, folder: Path) -> dict:
    space, table = get_space("nb201"), load_table("nb201-cifar10")
    tests = np.array([row["test_acc"] for row in table.rows.values()])
    data = {"kind": "digits", **({"limit": settings["limit"]} if settings["limit"] else {})}
    out: dict = {"table_test_acc": {"mean": float(tests.mean()), "max": float(tests.max())}}
    for label, (name, kwargs) in NB201_METHODS.items():
        start = time.perf_counter()
        search = get_search(name, space, seed=0, dataset=data, epochs=settings["epochs"],
                            batch_size=settings["batch"], channels=settings["channels"],
                            cells=settings["cells"], top=3, **kwargs)
        outcome = search.run(folder / label)
        key = space.key(outcome.archs[0])
        test_acc = table.rows[key]["test_acc"]
        out[label] = {
            "key": key, "skip_connections": outcome.history[-1]["skip_connections"],
            "skip_connections_per_epoch": [r["skip_connections"] for r in outcome.history],
            "test_acc": test_acc,
            "test_acc_percentile": float((tests < test_acc).mean() * 100),
            "next_by_alpha": [{"key": space.key(a), "test_acc": table.rows[space.key(a)]
                               ["test_acc"]} for a in outcome.archs[1:]],
            "supernet_val_acc": outcome.metrics[0]["supernet_val_acc"],
            "seconds": time.perf_counter() - start}
        print(f"  {label:<10} {key}  skips {out[label]['skip_connections']}  "
              f"test_acc {test_acc:.2f} ({out[label]['test_acc_percentile']:.0f}th pct)  "
              f"supernet val {out[label]['supernet_val_acc']:.3f}  "
              f"{out[label]['seconds']:.0f} s", flush=True)
    return out


# ---- 3. fbnet -----------------------------------------------------------------------------
def bench_fbnet(settings: dict, folder: Path) -> dict:
    """One measured table and budget; a run with the latency penalty (`latency_weight`
    0.2, the default) and one without (0: only the budget-constrained derivation acts)."""
    from search_spaces.nb201 import OPS

    space = get_space("nb201")
    lut = measure_nb201_lut(space)
    grid, _ = nb201_ranked(np.full((6, 5), 0.2))
    latencies = [predict_from_lut(lut, [OPS[i] for i in row]) for row in grid]
    low, high = min(latencies), max(latencies)
    budget = low + settings["budget_fraction"] * (high - low)
    out: dict = {"lut": lut, "budget_ms": budget, "table_range_ms": [low, high]}
    for weight in (0.2, 0.0):
        out[f"latency_weight={weight}"] = fbnet_run(space, lut, budget, weight, settings,
                                                    folder / f"fbnet-{weight}")
    return out


def fbnet_run(space, lut: dict, budget: float, weight: float, settings: dict,
              folder: Path) -> dict:
    # no latency_table: the search measures (and calibrates) its own table on this worker and
    # checks its derived cell as a whole network, as a job's fbnet does
    search = get_search("fbnet", space, seed=0, epochs=settings["epochs"], batch_size=64,
                        max_latency_ms=budget, latency_weight=weight)
    outcome = search.run(folder)
    arch, argmax = outcome.archs[0], search.current_arch()

    def measured(a: dict) -> float:
        torch.manual_seed(0)
        return measure_latency_ms(space.build(a), space.input_shape(), repeats=30,
                                  warmup=10)["median_ms"]

    out = {"derived": {"key": space.key(arch), "table_ms": search.table_latency(arch),
                       "measured_ms": measured(arch),
                       "search_measured_ms": outcome.metrics[0].get("measured_latency_ms"),
                       "meets_budget": outcome.metrics[0]["meets_budget"]},
           "argmax": {"key": space.key(argmax), "table_ms": search.table_latency(argmax),
                      "measured_ms": measured(argmax)},
           "expected_latency_per_epoch": [r["expected_latency_ms"] for r in outcome.history],
           "supernet_val_acc": outcome.metrics[0]["supernet_val_acc"]}
    for what in ("derived", "argmax"):
        print(f"  fbnet latency_weight {weight}: {what:<8} {out[what]['key']}  table "
              f"{out[what]['table_ms']:.2f} ms  measured {out[what]['measured_ms']:.2f} ms  "
              f"(budget {budget:.2f} ms)", flush=True)
    return out


def uniform_arch(space, expand: int) -> dict:
    """The largest network with every block at the same expand ratio (uniform pruning)."""
    arch = space.max_arch()
    return space.validate({**arch, "stages": [
        {"depth": st["depth"], "blocks": [{**b, "expand": expand} for b in st["blocks"]]}
        for st in arch["stages"]]})


def tas_run(space, seed: int, expand: int, settings: dict, folder: Path) -> dict:
    """One TAS search to the FLOPs of uniform pruning at `expand`, and that uniform network
    distilled from the same teacher the same way."""
    uniform = uniform_arch(space, expand)
    dataset = {"kind": "digits", **({"limit": settings["limit"]} if settings["limit"] else {})}
    started = time.perf_counter()
    search = get_search("tas", space, seed=seed, dataset=dataset,
                        target_flops=space.flops(uniform),
                        **{k: settings[k] for k in ("teacher_epochs", "epochs", "kd_epochs",
                                                    "batch_size", "arch_lr")})
    outcome = search.run(folder / f"tas-{seed}-{expand}")
    tas_seconds = time.perf_counter() - started
    metrics = outcome.metrics[0]
    _, uniform_acc = search.distill(uniform)
    teacher = metrics["teacher_acc"]
    return {"seed": seed, "uniform_expand": expand, "teacher_acc": teacher,
            "full_flops": search.full_flops, "target_flops": metrics["target_flops"],
            "tas": {"key": space.key(outcome.archs[0]), "flops": metrics["flops"],
                    "argmax_flops": metrics["argmax_flops"], "acc": metrics["distilled_acc"],
                    "drop": teacher - metrics["distilled_acc"], "seconds": tas_seconds},
            "uniform": {"key": space.key(uniform), "flops": float(space.flops(uniform)),
                        "acc": uniform_acc, "drop": teacher - uniform_acc}}


def _tas_spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def bench_tas(settings: dict, folder: Path, partial: Path | None = None) -> dict:
    """Section 4: TAS against uniform width pruning at the same FLOPs (see the docstring);
    the runs so far go to `partial` after each one."""
    space = get_space("mbconv", **TAS_SPACE)
    runs = []
    for expand in settings["uniform_expands"]:
        for seed in settings["seeds"]:
            runs.append(tas_run(space, seed, expand, settings, folder))
            r = runs[-1]
            print(f"  seed {seed} expand {expand}: tas {r['tas']['key']} "
                  f"{r['tas']['acc']:.2f}%, uniform {r['uniform']['acc']:.2f}%, teacher "
                  f"{r['teacher_acc']:.2f}% ({r['tas']['seconds']:.0f} s)", flush=True)
            if partial is not None:
                partial.write_text(json.dumps({"partial": True, "runs": runs}, indent=1))
    summary = {}
    for expand in settings["uniform_expands"]:
        mine = [r for r in runs if r["uniform_expand"] == expand]
        summary[f"expand{expand}"] = {
            "flops_ratio": {m: _tas_spread([r[m]["flops"] / r["full_flops"] for r in mine])
                            for m in ("tas", "uniform")},
            "drop": {m: _tas_spread([r[m]["drop"] for r in mine]) for m in ("tas", "uniform")},
            "tas_minus_uniform_acc": _tas_spread([r["tas"]["acc"] - r["uniform"]["acc"]
                                              for r in mine]),
            "teacher_acc": _tas_spread([r["teacher_acc"] for r in mine])}
    return {"space_args": TAS_SPACE, "settings": settings, "runs": runs, "summary": summary}


def print_tas(tas: dict) -> None:
    for name, s in tas["summary"].items():
        for method in ("tas", "uniform"):
            ratio, drop = s["flops_ratio"][method], s["drop"][method]
            print(f"  {name} {method:<8} FLOPs {100 * ratio['mean']:5.1f}% of the full net   "
                  f"accuracy drop {drop['mean']:5.2f} +- {drop['sd']:.2f} pts "
                  f"(n={drop['n']})")
        diff = s["tas_minus_uniform_acc"]
        print(f"  {name} TAS - uniform accuracy {diff['mean']:+.2f} +- {diff['sd']:.2f} pts "
              f"(teacher {s['teacher_acc']['mean']:.2f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test (< 60 s)")
    parser.add_argument("--out", type=Path, help="folder for the JSON (default bench/results; "
                                                 "quick: a temporary folder)")
    parser.add_argument("--only", choices=["tas", "ranks", "fbnetv5", "fbnet-mbconv"],
                        help="run only this section (its own JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = QUICK if args.quick else FULL
    out = args.out or (Path(tempfile.mkdtemp(prefix="nas-bench-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.only == "tas":
        main_tas(TAS_QUICK if args.quick else TAS_FULL, out)
        return
    if args.only == "ranks":
        main_ranks(RANKS_QUICK if args.quick else RANKS_FULL, out)
        return
    if args.only == "fbnetv5":
        main_fbnetv5(FBNETV5_QUICK if args.quick else FBNETV5_FULL, out)
        return
    if args.only == "fbnet-mbconv":  # its own script: bench/weight_sharing_fbnet_mbconv.py
        from weight_sharing_fbnet_mbconv import main_section

        main_section(args.quick, out)
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        print(f"1. darts vs pc-darts (k=4), darts space, 3x32x32, batch "
              f"{settings['step']['batch']}, channels {settings['step']['channels']}, "
              f"{settings['step']['cells']} cells", flush=True)
        steps = bench_steps(settings["step"], work)
        for name in ("darts", "pc-darts"):
            r = steps[name]
            print(f"  {name:<9} step {r['step_seconds_median'] * 1000:8.1f} ms   memory "
                  f"{r['memory_bytes'] / 2**20:8.1f} MiB   "
                  f"params {r['param_bytes'] / 2**20:.2f} MiB")
        print(f"  pc-darts / darts: memory {steps['ratio']['memory']:.2f}x (target <= 0.35), "
              f"step time {steps['ratio']['step_time']:.2f}x (target <= 0.5)\n", flush=True)
        print(f"2. nb201 on digits, {settings['nb201']['epochs']} epochs", flush=True)
        nb201 = bench_nb201(settings["nb201"], work)
        print(f"  (NAS-Bench-201 CIFAR-10 test_acc: mean {nb201['table_test_acc']['mean']:.2f}, "
              f"max {nb201['table_test_acc']['max']:.2f})\n")
        print(f"3. fbnet on nb201, {settings['fbnet']['epochs']} epochs", flush=True)
        fbnet = bench_fbnet(settings["fbnet"], work)
    tas = main_tas(TAS_QUICK if args.quick else TAS_FULL, out)
    ranks = main_ranks(RANKS_QUICK if args.quick else RANKS_FULL, out)
    fbnetv5 = main_fbnetv5(FBNETV5_QUICK if args.quick else FBNETV5_FULL, out)
    record = {"settings": settings, "step_cost": steps, "nb201": nb201, "fbnet": fbnet,
              "tas": tas, "ranks": ranks, "fbnetv5": fbnetv5,
              "seconds": time.perf_counter() - started, "torch": torch.__version__,
              "python": platform.python_version(), "machine": platform.machine()}
    path = out / "weight_sharing.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{record['seconds']:.0f} s; wrote {path}")


def main_tas(settings: dict, out: Path) -> dict:
    """Section 4 alone: run, print, write `weight_sharing_tas.json`."""
    started = time.perf_counter()
    print(f"\n4. tas on digits: pruned to uniform expand {settings['uniform_expands']}'s "
          f"FLOPs, seeds {settings['seeds']}, epochs teacher {settings['teacher_epochs']} / "
          f"search {settings['epochs']} / distillation {settings['kd_epochs']}", flush=True)
    path = out / "weight_sharing_tas.json"
    with tempfile.TemporaryDirectory() as scratch:
        tas = bench_tas(settings, Path(scratch), partial=out / "weight_sharing_tas.partial.json")
    tas["seconds"] = time.perf_counter() - started
    record = {**tas, "torch": torch.__version__, "python": platform.python_version(),
              "machine": platform.machine()}
    path.write_text(json.dumps(record, indent=2) + "\n")
    (out / "weight_sharing_tas.partial.json").unlink(missing_ok=True)
    print_tas(tas)
    print(f"  {tas['seconds']:.0f} s; wrote {path}")
    return tas


# ---- 5. data-parallel ranks (`strategy_args.workers`) ---------------------------------------
#: Methods run on 1 and on 2 ranks with the same global batch (fbnet with a fixed table, so
#: both runs use the same one; oneshot on a small mbconv, latency not measured).
RANK_METHODS = {
    "darts-1st": ("darts", "nb201", {}, {"order": 1}),
    "darts-2nd": ("darts", "nb201", {}, {"order": 2}),
    "pc-darts": ("pc-darts", "nb201", {}, {"k": 2, "warmup_epochs": 0, "batch_size": 32}),
    "rarts": ("rarts", "nb201", {}, {}),
    "fbnet": ("fbnet", "nb201", {}, {"max_latency_ms": 5.0, "latency_table": {
        "none": 0.0, "skip_connect": 0.1, "nor_conv_1x1": 0.6, "nor_conv_3x3": 1.5,
        "avg_pool_3x3": 0.3, "skeleton_ms": 1.0}}),
    "oneshot": ("oneshot", "mbconv", {
        "input_channels": 1, "input_size": 8, "num_classes": 10, "stage_channels": [16, 24],
        "stage_strides": [2, 2], "stem_channels": 8, "head_channels": 32, "depths": [1, 2],
        "kernel_sizes": [3, 5], "expand_ratios": [2, 4], "width_mults": [0.5, 1.0]},
        {"population": 6, "generations": 1, "top_k": 2, "latency": "none", "bn_samples": 64}),
}
RANKS_FULL = {"epochs": 5, "limit": 600, "batch_size": 32, "methods": list(RANK_METHODS)}
RANKS_QUICK = {"epochs": 1, "limit": 128, "batch_size": 32, "methods": ["darts-1st"]}


def _arch_tensors(state: dict) -> dict[str, torch.Tensor]:
    """A checkpoint's architecture parameters (alpha, beta), else every floating-point
    supernet tensor (oneshot has no architecture parameters: its sampler is seeded)."""
    if "arch" in state:
        return {k: v.float() for k, v in state["arch"].items()}
    return {k: v.float() for k, v in state["supernet"].items() if v.is_floating_point()}


def ranks_run(label: str, workers: int, settings: dict, folder: Path,
              control: bool = False) -> dict:
    """One search of `RANK_METHODS[label]` on `workers` ranks: wall time, seconds per epoch,
    derived keys, whether the ranks' hashes agreed every epoch, the architecture tensors.
    `control`: 1 rank through the data-parallel code path (a 1-process group must exist)."""
    from workers.weight_sharing.distributed import DataParallel

    method, space_name, space_args, extra = RANK_METHODS[label]
    args = {"epochs": settings["epochs"], "batch_size": settings["batch_size"], "seed": 1,
            "dataset": {"kind": "digits", "limit": settings["limit"]},
            **({} if method == "oneshot" else {"channels": 4}), **extra}
    space = get_space(space_name, **space_args)
    target = folder / f"{label}-{workers}{'-control' if control else ''}"
    started = time.perf_counter()
    search = get_search(method, space, workers=workers, **args)
    if control:
        search.ranks = DataParallel(0, 1)
    outcome = search.run(target)
    wall = time.perf_counter() - started
    state = torch.load(target / "checkpoint.pt", map_location="cpu", weights_only=False)
    return {"wall_s": wall, "epoch_s": [r["seconds"] for r in outcome.history],
            "keys": [space.key(a) for a in outcome.archs],
            "ranks_agree": all(len(set(r.get("arch_hashes", [0]))) == 1
                               for r in outcome.history),
            "tensors": _arch_tensors(state["state"])}


def bench_ranks(settings: dict, folder: Path) -> dict:
    """Per method: 1 rank against 2 ranks (see the module docstring, 5.)."""
    import torch.distributed as dist

    from workers.executors.ray import connect_ray

    connect_ray()
    dist.init_process_group("gloo", init_method=f"file://{folder / 'control-store'}", rank=0,
                            world_size=1)
    out = {}
    for label in settings["methods"]:
        one, two = (ranks_run(label, w, settings, folder) for w in (1, 2))
        control = ranks_run(label, 1, settings, folder, control=True)
        diff = max(float((one["tensors"][k] - two["tensors"][k]).abs().max())
                   for k in one["tensors"])
        control_diff = max(float((one["tensors"][k] - control["tensors"][k]).abs().max())
                           for k in one["tensors"])
        out[label] = {"epoch_s_1": _spread(one["epoch_s"]), "epoch_s_2": _spread(two["epoch_s"]),
                      "wall_s_1": one["wall_s"], "wall_s_2": two["wall_s"],
                      "max_arch_param_diff": diff, "same_derived": one["keys"] == two["keys"],
                      "max_param": max(float(t.abs().max()) for t in one["tensors"].values()),
                      "control_max_diff": control_diff,
                      "control_same_derived": one["keys"] == control["keys"],
                      "ranks_agree_every_epoch": two["ranks_agree"],
                      "derived_1": one["keys"][0], "derived_2": two["keys"][0]}
    dist.destroy_process_group()
    return out


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "spread": max(values) - min(values),
            "n": len(values)}


def print_ranks(ranks: dict) -> None:
    for label, r in ranks.items():
        one, two = r["epoch_s_1"], r["epoch_s_2"]
        print(f"  {label:<10} s/epoch: 1 rank {one['median']:6.2f} (spread {one['spread']:.2f})"
              f"  2 ranks {two['median']:6.2f} (spread {two['spread']:.2f})  "
              f"{one['median'] / two['median']:.2f}x   wall {r['wall_s_1']:.0f} / "
              f"{r['wall_s_2']:.0f} s   max |d| {r['max_arch_param_diff']:.1e} (control "
              f"{r['control_max_diff']:.1e}, max |param| {r['max_param']:.1e})   same derived: "
              f"{r['same_derived']} (control {r['control_same_derived']})   ranks agree: "
              f"{r['ranks_agree_every_epoch']}", flush=True)


def main_ranks(settings: dict, out: Path) -> dict:
    """Section 5 alone: run, print, write `weight_sharing_ranks.json`."""
    started = time.perf_counter()
    print(f"\n5. data-parallel ranks: 1 vs 2 (Ray Train, gloo), global batch "
          f"{settings['batch_size']}, {settings['epochs']} epochs, digits limit "
          f"{settings['limit']}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        ranks = bench_ranks(settings, Path(scratch))
    print_ranks(ranks)
    record = {"settings": settings, "ranks": ranks, "seconds": time.perf_counter() - started,
              "cpus": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
              "torch": torch.__version__, "python": platform.python_version(),
              "machine": platform.machine()}
    path = out / "weight_sharing_ranks.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"  {record['seconds']:.0f} s; wrote {path}")
    return ranks


# ---- 6. fbnetv5: one multi-task search against one search per task ---------------------------
#: A small mbconv on 8x8 digits (3 stages of up to 3 blocks; kernels, expand ratios, widths).
FBNETV5_SPACE = {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24, 32],
                 "stage_strides": [2, 2, 1], "stem_channels": 8, "head_channels": 48,
                 "depths": [1, 2, 3], "kernel_sizes": [3, 5], "expand_ratios": [2, 4, 6],
                 "width_mults": [0.5, 1.0]}
FBNETV5_FULL = {"tasks": ["class", "parity", "loops"], "seeds": [0, 1, 2], "epochs": 5,
                "limit": None, "samples": 2, "flops_weight": 0.5, "train_epochs": 6,
                "train_seeds": 2}
FBNETV5_QUICK = {"tasks": ["class", "parity"], "seeds": [0], "epochs": 1, "limit": 160,
                 "samples": 1, "flops_weight": 0.5, "train_epochs": 1, "train_seeds": 1}


def _task_data(data, task: str):
    """`data` with the labels of `task` (`workers.weight_sharing.fbnetv5.TASKS`)."""
    import dataclasses

    from workers.weight_sharing.fbnetv5 import task_labels

    y_train, classes = task_labels(task, data.y_train, data.num_classes)
    y_val, _ = task_labels(task, data.y_val, data.num_classes)
    return dataclasses.replace(data, y_train=y_train, y_val=y_val), classes


_FBNETV5_DATA: dict = {}


def fbnetv5_standalone(arch: dict, task: str, settings: dict) -> list[float]:
    """Validation accuracy of `arch` trained from scratch on `task`, one per training seed."""
    from workers.datasets import parse_dataset
    from workers.training import TrainConfig, train_model

    if (task, settings["limit"]) not in _FBNETV5_DATA:
        digits = parse_dataset({"kind": "digits", "limit": settings["limit"]}
                               if settings["limit"] else "digits").load()
        _FBNETV5_DATA[task, settings["limit"]] = _task_data(digits, task)
    data, classes = _FBNETV5_DATA[task, settings["limit"]]
    space = get_space("mbconv", **FBNETV5_SPACE, num_classes=classes)
    out = []
    for seed in range(settings["train_seeds"]):
        torch.manual_seed(seed)
        config = TrainConfig(epochs=settings["train_epochs"], batch_size=64, lr=0.05,
                             seed=seed, threads=1, bn_recalibration=512)
        out.append(train_model(space.build(arch), data, config).val_acc)
    return out


def fbnetv5_search(tasks: list[str], seed: int, settings: dict, folder: Path) -> dict:
    """One fbnetv5 search over `tasks`: wall seconds, supernet passes and the arch per task."""
    space = get_space("mbconv", **FBNETV5_SPACE)
    dataset = {"kind": "digits", **({"limit": settings["limit"]} if settings["limit"] else {})}
    search = get_search("fbnetv5", space, seed=seed, epochs=settings["epochs"], tasks=tasks,
                        dataset=dataset, samples=settings["samples"], batch_size=64,
                        flops_weight=settings["flops_weight"], bn_samples=256, threads=1)
    started = time.perf_counter()
    outcome = search.run(folder / f"{'+'.join(tasks)}-{seed}")
    wall = time.perf_counter() - started
    steps = sum(r["steps"] for r in outcome.history)
    return {"wall_s": wall, "train_s": sum(r["seconds"] for r in outcome.history),
            "supernet_passes": steps * settings["samples"] * 2,
            "archs": {tasks[int(m["task_index"])]: {"key": space.key(a), "arch": a,
                                                   "supernet_acc": m["supernet_acc"],
                                                   "flops": m["flops"]}
                      for a, m in zip(outcome.archs, outcome.metrics, strict=True)}}


def _fbnetv5_spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "median": statistics.median(values), "n": len(values)}


def bench_fbnetv5(settings: dict, folder: Path) -> dict:
    """Per seed: one multi-task search over every task, one single-task search per task with
    the same settings (epochs, samples, batch: the same budget per task), and a uniformly
    random architecture per task; every found architecture trained from scratch on its
    task (`train_seeds` inits). Costs: wall seconds and supernet passes (training forward +
    backward and scoring forward per sampled subnet)."""
    space = get_space("mbconv", **FBNETV5_SPACE)
    tasks, runs = settings["tasks"], []
    fbnetv5_search(tasks, -1, {**settings, "epochs": 1, "limit": 64}, folder)  # warm-up
    for seed in settings["seeds"]:
        multi = fbnetv5_search(tasks, seed, settings, folder)
        single = {t: fbnetv5_search([t], seed, settings, folder) for t in tasks}
        rng = np.random.default_rng([seed, 99])
        run = {"seed": seed, "multi_wall_s": multi["wall_s"],
               "single_wall_s": sum(s["wall_s"] for s in single.values()),
               "multi_train_s": multi["train_s"],
               "single_train_s": sum(s["train_s"] for s in single.values()),
               "multi_passes": multi["supernet_passes"],
               "single_passes": sum(s["supernet_passes"] for s in single.values()),
               "tasks": {}}
        for t in tasks:
            found = {"multi": multi["archs"][t]["arch"], "single": single[t]["archs"][t]["arch"],
                     "random": space.sample(rng)}
            run["tasks"][t] = {m: {"key": space.key(a), "flops": space.flops(a),
                                   "acc": statistics.fmean(fbnetv5_standalone(a, t, settings))}
                               for m, a in found.items()}
            r = run["tasks"][t]
            print(f"  seed {seed} {t:<9} multi {r['multi']['acc']:6.2f}%  single "
                  f"{r['single']['acc']:6.2f}%  random {r['random']['acc']:6.2f}%   "
                  f"({r['multi']['key']} / {r['single']['key']})", flush=True)
        print(f"  seed {seed} cost: one multi-task search {run['multi_wall_s']:.1f} s "
              f"(training {run['multi_train_s']:.1f} s), {len(tasks)} single-task searches "
              f"{run['single_wall_s']:.1f} s (training {run['single_train_s']:.1f} s)",
              flush=True)
        runs.append(run)
    summary = {t: {m: {"acc": _fbnetv5_spread([r["tasks"][t][m]["acc"] for r in runs]),
                       "flops": _fbnetv5_spread([r["tasks"][t][m]["flops"] for r in runs])}
                   for m in ("multi", "single", "random")} for t in tasks}
    for t in tasks:
        summary[t]["multi_minus_single"] = _fbnetv5_spread(
            [r["tasks"][t]["multi"]["acc"] - r["tasks"][t]["single"]["acc"] for r in runs])
    summary["cost"] = {"multi_wall_s": _fbnetv5_spread([r["multi_wall_s"] for r in runs]),
                       "single_wall_s": _fbnetv5_spread([r["single_wall_s"] for r in runs]),
                       "wall_ratio": _fbnetv5_spread([r["single_wall_s"] / r["multi_wall_s"]
                                                      for r in runs]),
                       "multi_train_s": _fbnetv5_spread([r["multi_train_s"] for r in runs]),
                       "single_train_s": _fbnetv5_spread([r["single_train_s"] for r in runs]),
                       "train_ratio": _fbnetv5_spread([r["single_train_s"] / r["multi_train_s"]
                                                       for r in runs]),
                       "passes_ratio": runs[0]["single_passes"] / runs[0]["multi_passes"]}
    return {"space_args": FBNETV5_SPACE, "settings": settings, "runs": runs,
            "summary": summary}


def print_fbnetv5(result: dict) -> None:
    summary = result["summary"]
    for t in result["settings"]["tasks"]:
        s = summary[t]
        line = "   ".join(f"{m} {s[m]['acc']['mean']:6.2f} +- {s[m]['acc']['sd']:.2f}% "
                           f"({s[m]['flops']['mean'] / 1e3:.0f} kFLOPs)"
                           for m in ("multi", "single", "random"))
        d = s["multi_minus_single"]
        print(f"  {t:<9} {line}   multi - single {d['mean']:+.2f} +- {d['sd']:.2f} pts "
              f"(n={d['n']})")
    c = summary["cost"]
    print(f"  cost: one multi-task run {c['multi_wall_s']['median']:.1f} s wall "
          f"({c['multi_train_s']['median']:.1f} s training) vs "
          f"{len(result['settings']['tasks'])} single-task runs "
          f"{c['single_wall_s']['median']:.1f} s ({c['single_train_s']['median']:.1f} s); "
          f"ratio wall {c['wall_ratio']['median']:.2f}x, training "
          f"{c['train_ratio']['median']:.2f}x, supernet passes {c['passes_ratio']:.2f}x "
          f"(medians over seeds; a shared, loaded machine)")


def main_fbnetv5(settings: dict, out: Path) -> dict:
    """Section 6 alone: run, print, write `weight_sharing_fbnetv5.json`."""
    started = time.perf_counter()
    print(f"\n6. fbnetv5 on digits: tasks {settings['tasks']}, seeds {settings['seeds']}, "
          f"{settings['epochs']} search epochs, stand-alone {settings['train_epochs']} epochs x "
          f"{settings['train_seeds']} inits", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        result = bench_fbnetv5(settings, Path(scratch))
    print_fbnetv5(result)
    result["seconds"] = time.perf_counter() - started
    record = {**result, "cpus": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
              "torch": torch.__version__, "python": platform.python_version(),
              "machine": platform.machine()}
    path = out / "weight_sharing_fbnetv5.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"  {result['seconds']:.0f} s; wrote {path}")
    return result


if __name__ == "__main__":
    main()
