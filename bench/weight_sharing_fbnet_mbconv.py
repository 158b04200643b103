"""FBNet on `mbconv` (issue 19): does the search meet its latency budget on this worker?

A section of the weight-sharing benchmark, kept in its own script (bench/weight_sharing.py's
other sections are run by `python bench/weight_sharing.py`). Per seed: one `fbnet` search on
digits (8x8) over a layer-wise mbconv space (6 layers, 4 blocks each, skip where a stage may
be shallower) with the paper's loss and a table the search measures on this CPU; the budget is
40% of the way from the smallest to the largest architecture's table latency. The derived
architecture (best of the samples drawn from the final distribution) is then measured here
as a whole network (median of 50 runs, 1 thread) against the budget, and trained from
scratch beside a uniformly random architecture that also measures within the budget (same
training: `train_epochs`, mean of `train_seeds` inits).

    python bench/weight_sharing_fbnet_mbconv.py           # full (~5 min on 2 shared cores)
    python bench/weight_sharing_fbnet_mbconv.py --quick   # CI smoke test (< 20 s)

Writes bench/results/weight_sharing_fbnet_mbconv.json (`--quick`: a temporary folder).
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from search_spaces import get_space  # noqa: E402
from workers.latency import measure_latency_ms  # noqa: E402
from workers.weight_sharing import get_search  # noqa: E402
from workers.weight_sharing.fbnet_mbconv import arch_of, layer_choices  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SPACE = {"input_channels": 1, "input_size": 8, "stage_channels": [32, 64, 96],
         "stage_strides": [2, 2, 1], "stem_channels": 8, "head_channels": 64,
         "depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [2, 6],
         "width_mults": [1.0]}
FULL = {"seeds": [0, 1, 2], "limit": 600, "epochs": 6, "samples": 100,
        "budget_fraction": 0.4, "train_epochs": 8, "train_seeds": 2, "random_tries": 40}
QUICK = {"seeds": [0], "limit": 64, "epochs": 1, "samples": 30, "budget_fraction": 0.4,
         "train_epochs": 1, "train_seeds": 1, "random_tries": 10}


def measured_ms(space, arch: dict) -> float:
    torch.manual_seed(0)
    return float(measure_latency_ms(space.build(arch), space.input_shape(arch), threads=1,
                                    repeats=50, warmup=10)["median_ms"])


def standalone(space, arch: dict, settings: dict) -> float:
    """Validation accuracy trained from scratch (mean over `train_seeds` inits)."""
    from workers.datasets import parse_dataset
    from workers.training import TrainConfig, train_model

    data = parse_dataset({"kind": "digits", "limit": settings["limit"] * 2}).load()
    accs = []
    for seed in range(settings["train_seeds"]):
        torch.manual_seed(seed)
        config = TrainConfig(epochs=settings["train_epochs"], batch_size=64, lr=0.05, seed=seed,
                             threads=1)
        accs.append(train_model(space.build(arch), data, config).val_acc)
    return float(np.mean(accs))


def random_within(space, budget: float, seed: int, tries: int = 40) -> tuple[dict, float]:
    """A uniformly random architecture of the space (its depths, kernels, ratios; the search's
    width and resolution) that measures within the budget here (the fastest tried when none
    does)."""
    rng = np.random.default_rng([seed, 7])
    best = None
    for _ in range(tries):
        arch = {**space.sample(rng), "resolution": space.input_size,
                "width": max(space.width_mults)}
        ms = measured_ms(space, arch)
        if ms <= budget:
            return arch, ms
        best = min(best or (arch, ms), (arch, ms), key=lambda t: t[1])
    return best


def fbnet_seed(space, seed: int, budget: float, settings: dict, folder: Path) -> dict:
    search = get_search("fbnet", space, seed=seed, epochs=settings["epochs"], batch_size=64,
                        max_latency_ms=budget, samples=settings["samples"],
                        dataset={"kind": "digits", "limit": settings["limit"]})
    started = time.perf_counter()
    outcome = search.run(folder / f"seed{seed}")
    seconds = time.perf_counter() - started
    arch, metrics = outcome.archs[0], outcome.metrics[0]
    rand, rand_ms = random_within(space, budget, seed, settings["random_tries"])
    out = {"key": space.key(arch), "table_ms": metrics["table_latency_ms"],
           "search_measured_ms": metrics.get("measured_latency_ms"),
           "measured_ms": measured_ms(space, arch), "budget_ms": budget,
           "expected_latency_per_epoch": [r["expected_latency_ms"] for r in outcome.history],
           "search_seconds": seconds, "accuracy": standalone(space, arch, settings),
           "random": {"key": space.key(rand), "measured_ms": rand_ms,
                      "accuracy": standalone(space, rand, settings)}}
    out["meets_budget"] = out["measured_ms"] <= budget
    print(f"  seed {seed}: {out['key']}  table {out['table_ms']:.3f} ms  measured "
          f"{out['measured_ms']:.3f} ms (budget {budget:.3f})  acc {out['accuracy']:.1f}%  |  "
          f"random {out['random']['key']} {rand_ms:.3f} ms acc "
          f"{out['random']['accuracy']:.1f}%  ({seconds:.0f} s search)", flush=True)
    return out


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def bench_fbnet_mbconv(settings: dict, folder: Path) -> dict:
    space = get_space("mbconv", **SPACE)
    choices = layer_choices(space)
    n_blocks = len(choices[0]) - 1  # the last block candidate is the largest (k, e)
    small = arch_of(space, [len(c) - 1 if c[-1] == "skip" else 0 for c in choices])
    large = arch_of(space, [n_blocks - 1] * len(choices))
    low, high = measured_ms(space, small), measured_ms(space, large)
    budget = low + settings["budget_fraction"] * (high - low)
    print(f"fbnet on mbconv (digits, {settings['epochs']} epochs, seeds {settings['seeds']}): "
          f"smallest..largest measured {low:.3f}..{high:.3f} ms, budget {budget:.3f} ms",
          flush=True)
    runs = [fbnet_seed(space, s, budget, settings, folder) for s in settings["seeds"]]
    summary = {"measured_over_budget": _spread([r["measured_ms"] / budget for r in runs]),
               "met": sum(r["meets_budget"] for r in runs), "seeds": len(runs),
               "fbnet_accuracy": _spread([r["accuracy"] for r in runs]),
               "random_accuracy": _spread([r["random"]["accuracy"] for r in runs]),
               "random_measured_over_budget": _spread([r["random"]["measured_ms"] / budget
                                                       for r in runs])}
    print(f"  budget met {summary['met']}/{summary['seeds']}; measured/budget median "
          f"{summary['measured_over_budget']['median']:.2f} "
          f"[{summary['measured_over_budget']['min']:.2f}, "
          f"{summary['measured_over_budget']['max']:.2f}]; accuracy fbnet "
          f"{summary['fbnet_accuracy']['mean']:.3f} +- {summary['fbnet_accuracy']['sd']:.3f} vs "
          f"random within budget {summary['random_accuracy']['mean']:.3f} +- "
          f"{summary['random_accuracy']['sd']:.3f}", flush=True)
    return {"space": SPACE, "settings": settings, "measured_range_ms": [low, high],
            "budget_ms": budget, "runs": runs, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test (< 20 s)")
    parser.add_argument("--out", type=Path, help="folder for the JSON")
    args = parser.parse_args()
    out = args.out or (Path(tempfile.mkdtemp(prefix="nas-bench-")) if args.quick else RESULTS)
    main_section(args.quick, out)


def main_section(quick: bool, out: Path) -> dict:
    """The section (also `python bench/weight_sharing.py --only fbnet-mbconv`)."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        result = bench_fbnet_mbconv(QUICK if quick else FULL, Path(scratch))
    result.update(seconds=time.perf_counter() - started, torch=torch.__version__,
                  python=platform.python_version(), machine=platform.machine())
    path = out / "weight_sharing_fbnet_mbconv.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['seconds']:.0f} s; wrote {path}")
    return result


if __name__ == "__main__":
    main()
