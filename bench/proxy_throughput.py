"""Throughput of training-free scoring: all 15,625 NAS-Bench-201 cells by the default battery
(`DEFAULT_PROXIES`), old engine beside new, measured in the same run.

The setting is the `proxy` strategy's as bench/proxy_search.py runs it: the scoring network
`cells_per_stage: 1`, the 20 CIFAR-10 images of ../shared/data, seed 0, torch on one thread
(what each of 2 Ray workers gets on this 2-core machine). Engines, interleaved cell by cell
so that the load other processes put on the machine falls on both alike:

- `old`: the engine as of commit 3fefba2: one fresh network per proxy (`compute_proxies`
  with the space's builder), MeCo's reference loop (every module output, the model's state
  saved and loaded through `state_dict`), every cell scored;
- `new`: the `proxy` evaluator today (`ProxyEvaluator.compute`: one network per cell shared
  by the proxies, MeCo's term computed once per tensor and not formed for a constant one,
  the model's tensors saved and put back directly), every cell scored (the default);
- `new + dedup`: the same on one cell per isomorphism class (`function_key`: 5,260 of the
  15,625), as the `proxy` strategy's `dedup: true` scores a whole-space pool.

Figures are CPU seconds of this process per cell (`time.process_time`; wall times, inflated
by the load, beside them), extrapolated to the whole space on 2 workers:
`mean per-cell CPU x cells scored / 2`. Spread: that estimate on each of 5 disjoint chunks of
the sample (median, min-max). The driver, Ray and SQLite are not in it (bench/proxy_search.py
`--score` times the whole service path). It also checks that the new engine's scores equal
the old one's on every sampled cell, and the ranking of `dedup` (Spearman of per-cell and
of class-shared scores with NB201 test accuracy, over the sampled cells).

    python bench/proxy_throughput.py           # 400 cells per engine, writes
                                               # bench/results/proxy_throughput.json
    python bench/proxy_throughput.py --quick   # CI smoke test: 12 cells, nothing written
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.proxies import IMAGES, images_present  # noqa: E402
from predictors.metrics import spearman  # noqa: E402
from predictors.proxies import get_proxy  # noqa: E402
from search_spaces import NB201Space  # noqa: E402
from search_spaces.nb201 import effective_ops, function_key  # noqa: E402
from workers.evaluators.proxy import DEFAULT_PROXIES, ProxyEvaluator  # noqa: E402
from workers.tables import load_table  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SPACE_ARGS = {"cells_per_stage": 1}
WORKERS = 2
CHUNKS = 5
SEED = 0


# ---- the old engine (commit 3fefba2) ------------------------------------------------------------
def _old_min_eigenvalue(features: torch.Tensor) -> float:
    rows = features.reshape(features.shape[0], -1).double()
    if rows.shape[1] < 2:
        return 0.0
    if rows.shape[0] == 1:
        return float(rows.std() > 0)
    corr = torch.nan_to_num(torch.corrcoef(rows), nan=0.0, posinf=0.0, neginf=0.0)
    return float(torch.linalg.eigvalsh(corr)[0])


def _old_meco(model: Any, inputs: Any, targets: Any, loss_fn: Any) -> float:
    """MeCo as the engine computed it before: a term for every module output."""
    terms: list[float] = []

    def on_forward(_module: Any, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            terms.append(_old_min_eigenvalue(out[0].detach()))

    handles = [m.register_forward_hook(on_forward) for m in model.modules()]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            model.load_state_dict(state)
        for module, training in modes.items():
            module.training = training
    values = torch.tensor(terms, dtype=torch.float64)
    return float(values[torch.isfinite(values)].sum())


OLD: dict[str, Callable[..., float]] = {"meco": _old_meco}


def old_engine(space: NB201Space, arch: dict, batch: tuple[Any, Any],
               names: list[str]) -> dict[str, float]:
    """One fresh network per proxy, seeded as `compute_proxies` seeds it."""
    out: dict[str, float] = {}
    for name in names:
        if name in ("params", "flops"):
            out[name] = float(space.params(arch) if name == "params" else space.flops(arch))
            continue
        torch.manual_seed(SEED)
        model = space.build(arch)
        torch.manual_seed(SEED)
        fn = OLD.get(name, get_proxy(name).fn)
        out[name] = float(fn(model, batch[0], batch[1], torch.nn.functional.cross_entropy))
    return out


# ---- sampling and timing ----------------------------------------------------------------------
def classes(space: NB201Space) -> tuple[dict[str, str], list[str]]:
    """Cell key -> the key scored for its class (the smallest live member, as `dedup` picks
    in a whole-space pool), and the sorted list of those."""
    members: dict[str, list[str]] = {}
    for arch in space.enumerate():
        members.setdefault(function_key(arch["ops"]), []).append(space.key(arch))
    chosen: dict[str, str] = {}
    for keys in members.values():
        live = [k for k in keys if effective_ops(space.from_key(k)["ops"])
                == space.from_key(k)["ops"]]
        pick = min(live or keys)
        chosen.update((k, pick) for k in keys)
    return chosen, sorted(set(chosen.values()))


def timed(call: Callable[[], dict[str, float]]) -> tuple[dict[str, float], float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    values = call()
    return values, time.process_time() - cpu, time.perf_counter() - wall


def extrapolate(per_cell: list[float], cells: int) -> dict[str, Any]:
    """Seconds for `cells` cells on WORKERS workers from per-cell seconds: the estimate of
    each of CHUNKS disjoint chunks, their median and range."""
    chunks = [c for c in np.array_split(np.array(per_cell), CHUNKS) if len(c)]
    estimates = sorted(float(c.mean()) * cells / WORKERS for c in chunks)
    return {"seconds": statistics.median(estimates), "min": estimates[0],
            "max": estimates[-1], "ms_per_cell": 1000 * float(np.mean(per_cell)),
            "cells_scored": cells, "sample": len(per_cell)}


def run(cells: int, names: list[str]) -> dict[str, Any]:
    torch.set_num_threads(1)
    space = NB201Space(**SPACE_ARGS)
    evaluator = ProxyEvaluator(space, proxies=names, dataset=f"npz:{IMAGES}", device="cpu")
    chosen, scored = classes(space)
    everything = sorted(chosen)
    rng = np.random.default_rng(SEED)
    sample = [everything[i] for i in rng.choice(len(everything), cells, replace=False)]
    reps = [scored[i] for i in rng.choice(len(scored), cells, replace=False)]
    batch = evaluator.batch(space.from_key(sample[0]))
    evaluator.compute(space.from_key(sample[0]), names)  # warm: imports, first allocations
    times: dict[str, dict[str, list[float]]] = {
        e: {"cpu": [], "wall": []} for e in ("old", "new", "new + dedup")}
    old_scores, new_scores, rep_scores = {}, {}, {}
    for cell, rep in zip(sample, reps, strict=True):
        arch, rep_arch = space.from_key(cell), space.from_key(rep)
        for engine, key, call, into in (
                ("old", cell, lambda a=arch: old_engine(space, a, batch, names), old_scores),
                ("new", cell, lambda a=arch: evaluator.compute(a, names), new_scores),
                ("new + dedup", rep, lambda a=rep_arch: evaluator.compute(a, names),
                 rep_scores)):
            values, cpu, wall = timed(call)
            times[engine]["cpu"].append(cpu)
            times[engine]["wall"].append(wall)
            into[key] = values
    differ = [k for k in sample if old_scores[k] != new_scores[k]]
    total = {"old": len(everything), "new": len(everything), "new + dedup": len(scored)}
    out: dict[str, Any] = {"proxies": names, "space_args": SPACE_ARGS, "workers": WORKERS,
                           "cells_in_space": len(everything), "classes": len(scored),
                           "engines": {}, "scores_differ_old_new": len(differ)}
    for engine, t in times.items():
        out["engines"][engine] = {"cpu": extrapolate(t["cpu"], total[engine]),
                                  "wall": extrapolate(t["wall"], total[engine])}
    out["dedup_ranking"] = dedup_ranking(space, evaluator, sample, new_scores, chosen, names)
    return out


def dedup_ranking(space: NB201Space, evaluator: ProxyEvaluator, sample: list[str],
                  own: dict[str, dict[str, float]], chosen: dict[str, str],
                  names: list[str]) -> dict[str, Any]:
    """Spearman with test_acc over the sampled cells: each cell's own scores vs its class's
    scored cell's (computed here when not the cell itself)."""
    table = load_table("nb201-cifar10")
    shared = {k: own[k] if chosen[k] == k else evaluator.compute(
        space.from_key(chosen[k]), names) for k in sample}
    acc = [table.rows[k]["test_acc"] for k in sample]
    proxies = [p for p in names if p not in ("params", "flops")]
    result: dict[str, Any] = {"cells": len(sample),
                              "shared_cells": sum(chosen[k] != k for k in sample)}
    for p in proxies:
        result[p] = {"own": spearman([own[k][p] for k in sample], acc),
                     "class": spearman([shared[k][p] for k in sample], acc)}
    return result


def report(out: dict[str, Any]) -> None:
    print(f"{out['cells_in_space']:,} NB201 cells ({out['classes']:,} isomorphism classes), "
          f"battery {', '.join(out['proxies'])}, {out['workers']} workers, network "
          f"{out['space_args']}; per-cell CPU (wall) from {out['engines']['old']['cpu']['sample']} "
          f"sampled cells per engine, this machine loaded by other processes")
    old = out["engines"]["old"]["cpu"]["seconds"]
    for engine, m in out["engines"].items():
        cpu, wall = m["cpu"], m["wall"]
        print(f"  {engine:<12} {cpu['ms_per_cell']:6.1f} ms/cell CPU ({wall['ms_per_cell']:6.1f} "
              f"wall) x {cpu['cells_scored']:,} cells / {out['workers']}: "
              f"{cpu['seconds'] / 60:5.2f} min [{cpu['min'] / 60:.2f}, {cpu['max'] / 60:.2f}]"
              f" (wall-based {wall['seconds'] / 60:.2f} min)  {old / cpu['seconds']:.2f}x")
    print(f"  scores differing between old and new engine: {out['scores_differ_old_new']} "
          f"of {out['engines']['old']['cpu']['sample']} cells")
    d = out["dedup_ranking"]
    for p, r in d.items():
        if isinstance(r, dict):
            print(f"  dedup ranking, {p}: Spearman with test_acc {r['own']:.4f} (own scores) vs "
                  f"{r['class']:.4f} (class's scores; {d['shared_cells']} of {d['cells']} "
                  f"cells take another cell's)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test (12 cells)")
    parser.add_argument("--cells", type=int, default=400, help="sampled cells per engine")
    parser.add_argument("--proxies", nargs="+", default=list(DEFAULT_PROXIES))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not images_present():
        return
    cells = 12 if args.quick else args.cells
    start = time.perf_counter()
    out = run(cells, list(args.proxies))
    out["date"] = time.strftime("%Y-%m-%d")
    out["bench_seconds"] = time.perf_counter() - start
    report(out)
    if args.quick and args.json is None:
        with tempfile.TemporaryDirectory() as folder:  # the JSON is written, then dropped
            (Path(folder) / "proxy_throughput.json").write_text(json.dumps(out, indent=1))
        return
    path = args.json or RESULTS / "proxy_throughput.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
