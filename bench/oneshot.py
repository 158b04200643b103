"""One-shot supernet ranking quality on digits: does inherited-weight accuracy rank subnets
like stand-alone training does, with and without complexity-aware sampling?

Protocol. A fixed, seeded uniform sample of distinct subnets of a reduced space (8x8 digits,
tiny channel counts) is trained from scratch, one by one, with the `train` evaluator's loop
(`workers.training.train_model`: SGD, cosine schedule, BN recalibration) for a few epochs;
the stand-alone accuracy is the mean over `--train-seeds` seeds, and the mean Kendall tau
between two seeds' rankings says how far the ground truth itself can be trusted (a ceiling).
For each variant (uniform sampling, complexity-aware sampling) the `oneshot` search trains
`--supernet-seeds` supernets with the sandwich rule and in-place distillation; a subnet's
inherited accuracy is its validation accuracy with weights sliced from the supernet and BN
recalibrated on 256 training examples. We report Kendall's tau and Spearman's rho between
inherited and stand-alone accuracy over the same subnets (mean over supernet seeds). Both
sides train on the first `--limit` digits training examples (600 by default: with all 1437,
six epochs put every subnet at 96.5-99.4% and the ranking is mostly seed noise) and are
scored on the same 360 validation digits.

    python bench/oneshot.py              # mbconv + hybrid, 40 subnets: 829 s (2 busy cores)
    python bench/oneshot.py --spaces mbconv --subnets 30
    python bench/oneshot.py --quick      # CI smoke test (< 60 s): mbconv, 8 subnets

Writes bench/results/oneshot.json (`--out` to change; `--quick` writes to a fresh temporary
folder, so it never overwrites the reference figures).
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from predictors.metrics import kendall_tau, spearman  # noqa: E402
from search_spaces import get_space  # noqa: E402
from workers.datasets import parse_dataset  # noqa: E402
from workers.training import TrainConfig, train_model  # noqa: E402
from workers.weight_sharing import get_search  # noqa: E402

RESULTS = ROOT / "bench" / "results"
#: Reduced spaces for 8x8 digits (settings chosen once, never per result).
SPACES: dict[str, dict[str, Any]] = {
    "mbconv": {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24, 32],
               "stage_strides": [2, 2, 1], "stem_channels": 8, "head_channels": 48,
               "depths": [1, 2, 3], "kernel_sizes": [3, 5], "expand_ratios": [2, 4],
               "width_mults": [0.5, 1.0], "resolutions": [6, 8]},
    "hybrid": {"input_channels": 1, "input_size": 8, "blocks": 4,
               "widths": [[8, 16], [16, 24], [24, 32]], "mlp_ratio": 2, "stem_stride": 1},
}
VARIANTS = {"uniform": {"complexity_aware": False}, "complexity-aware": {"complexity_aware": True}}


class Resized(torch.nn.Module):
    """A subnet that takes the data's 8x8 inputs at its own resolution (as the search does)."""

    def __init__(self, net: torch.nn.Module, side: int) -> None:
        super().__init__()
        self.net, self.side = net, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.side:
            x = torch.nn.functional.interpolate(x, size=(self.side, self.side),
                                                mode="bilinear", align_corners=False)
        return self.net(x)


def sample_subnets(space: Any, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` distinct subnets, sampled uniformly (as the search's random subnets are)."""
    rng = np.random.default_rng(seed)
    archs: dict[str, dict[str, Any]] = {}
    while len(archs) < count:
        arch = space.sample(rng)
        archs.setdefault(space.key(arch), arch)
    return list(archs.values())


def standalone_accuracies(space: Any, arch: dict[str, Any], data: Any, epochs: int,
                          seeds: int) -> list[float]:
    """Validation accuracy after training from scratch, one per seed (init and data order)."""
    accuracies = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        net = Resized(space.build(arch), space.input_shape(arch)[-1])
        config = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=seed, threads=1,
                             bn_recalibration=512)
        accuracies.append(train_model(net, data, config).val_acc)
    return accuracies


def seed_agreement(per_seed: list[list[float]]) -> float | None:
    """Mean Kendall tau between the stand-alone rankings of two different seeds: how well the
    ground truth agrees with itself (a ceiling for any proxy's tau against the seed mean)."""
    seeds = len(per_seed[0])
    taus = [kendall_tau([a[i] for a in per_seed], [a[j] for a in per_seed])
            for i in range(seeds) for j in range(i + 1, seeds)]
    return statistics.fmean(taus) if taus else None


def supernet_accuracies(space: Any, archs: list[dict[str, Any]], variant: dict[str, Any],
                        args: argparse.Namespace, seed: int,
                        folder: Path) -> tuple[list[float], dict[str, Any]]:
    search = get_search("oneshot", space, seed=seed, dataset=dataset(args),
                        epochs=args.supernet_epochs, batch_size=64, population=2,
                        generations=0, top_k=1, latency="none", **variant)
    started = time.perf_counter()
    outcome = search.run(folder)
    seconds = time.perf_counter() - started
    accuracies = [search.inherited_accuracy(a) for a in archs]
    last = outcome.history[-1]
    return accuracies, {"train_seconds": seconds, "val_acc_largest": last["val_acc_largest"],
                        "val_acc_smallest": last["val_acc_smallest"],
                        "max_flops_gap_last_epoch": last["max_flops_gap"]}


def dataset(args: argparse.Namespace) -> dict[str, Any]:
    return {"kind": "digits", "limit": args.limit}


def bench_variant(space: Any, archs: list[dict[str, Any]], standalone: list[float],
                  variant: dict[str, Any], args: argparse.Namespace,
                  folder: Path) -> dict[str, Any]:
    """Rank agreement of one sampling variant, per supernet seed and on average."""
    runs = []
    for seed in range(args.supernet_seeds):
        inherited, info = supernet_accuracies(space, archs, variant, args, seed,
                                              folder / f"seed{seed}")
        runs.append({"seed": seed, "kendall_tau": kendall_tau(inherited, standalone),
                     "spearman": spearman(inherited, standalone),
                     "inherited_mean": statistics.fmean(inherited), **info,
                     "inherited": inherited})
    return {"kendall_tau": statistics.fmean(r["kendall_tau"] for r in runs),
            "spearman": statistics.fmean(r["spearman"] for r in runs),
            "kendall_tau_per_seed": [r["kendall_tau"] for r in runs],
            "inherited_mean": statistics.fmean(r["inherited_mean"] for r in runs),
            "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
            "runs": runs}


def bench_space(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    space = get_space(name, **SPACES[name])
    data = parse_dataset(dataset(args)).load()
    archs = sample_subnets(space, args.subnets, seed=1)
    started = time.perf_counter()
    per_seed = [standalone_accuracies(space, a, data, args.train_epochs, args.train_seeds)
                for a in archs]
    standalone = [statistics.fmean(a) for a in per_seed]
    standalone_seconds = time.perf_counter() - started
    agreement = seed_agreement(per_seed)
    flops_tau = kendall_tau([space.flops(a) for a in archs], standalone)
    print(f"{name}: {len(archs)} subnets trained stand-alone ({args.train_epochs} epochs x "
          f"{args.train_seeds} seeds) in {standalone_seconds:.0f} s; accuracy "
          f"{min(standalone):.1f}..{max(standalone):.1f}%; seed-vs-seed tau "
          f"{'n/a' if agreement is None else f'{agreement:+.3f}'}; FLOPs-vs-accuracy tau "
          f"{flops_tau:+.3f}", flush=True)
    result: dict[str, Any] = {"space_args": SPACES[name], "subnets": len(archs),
                              "standalone_seconds": standalone_seconds,
                              "standalone_seed_vs_seed_tau": agreement,
                              "flops_vs_standalone_tau": flops_tau, "variants": {}}
    for label, variant in VARIANTS.items():
        entry = bench_variant(space, archs, standalone, variant, args,
                              folder / f"{name}-{label}")
        result["variants"][label] = entry
        taus = ", ".join(f"{t:+.3f}" for t in entry["kendall_tau_per_seed"])
        print(f"  {label:<17} tau {entry['kendall_tau']:+.3f} (per supernet seed: {taus})  "
              f"rho {entry['spearman']:+.3f}  inherited mean {entry['inherited_mean']:.1f}%  "
              f"supernet {entry['train_seconds']:.0f} s", flush=True)
    result["subnet_keys"] = [space.key(a) for a in archs]
    result["standalone"] = standalone
    result["standalone_per_seed"] = per_seed
    result["flops"] = [space.flops(a) for a in archs]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test (< 60 s)")
    parser.add_argument("--spaces", help=f"comma-separated, of: {', '.join(SPACES)}")
    parser.add_argument("--subnets", type=int, help="subnets ranked (default 40, quick 8)")
    parser.add_argument("--supernet-epochs", type=int, help="default 40, quick 3")
    parser.add_argument("--train-epochs", type=int, help="stand-alone epochs (default 6, quick 2)")
    parser.add_argument("--train-seeds", type=int, help="stand-alone seeds (default 3, quick 1)")
    parser.add_argument("--supernet-seeds", type=int, help="supernets per variant (default 2, "
                                                           "quick 1)")
    parser.add_argument("--limit", type=int, help="digits training examples (default 600, "
                                                  "quick 300; 1437 = all)")
    parser.add_argument("--out", type=Path, help="folder for the JSON (default bench/results; "
                                                 "quick: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    args.subnets = args.subnets or (8 if quick else 40)
    args.supernet_epochs = args.supernet_epochs or (3 if quick else 40)
    args.train_epochs = args.train_epochs or (2 if quick else 6)
    args.train_seeds = args.train_seeds or (1 if quick else 3)
    args.supernet_seeds = args.supernet_seeds or (1 if quick else 2)
    args.limit = args.limit or (300 if quick else 600)
    names = args.spaces.split(",") if args.spaces else (["mbconv"] if quick else list(SPACES))
    unknown = [n for n in names if n not in SPACES]
    if unknown:
        raise SystemExit(f"unknown space {unknown[0]!r}; known: {', '.join(SPACES)}")
    out = args.out or (Path(tempfile.mkdtemp(prefix="nas-bench-")) if quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oneshot-bench-") as work:
        results = {name: bench_space(name, args, Path(work)) for name in names}
    record = {
        "benchmark": "oneshot ranking on digits (8x8; `limit` training examples, 360 val)",
        "protocol": "Kendall tau / Spearman between inherited-weight val accuracy (BN "
                    "recalibrated on 256 train examples) and stand-alone short-training val "
                    "accuracy (train_model, mean over seeds) on the same uniform subnet sample",
        "settings": {"subnets": args.subnets, "supernet_epochs": args.supernet_epochs,
                     "train_epochs": args.train_epochs, "train_seeds": args.train_seeds,
                     "supernet_seeds": args.supernet_seeds, "limit": args.limit,
                     "sandwich": 2, "max_flops_gap": 0.25, "batch_size": 64},
        "results": results, "seconds": time.perf_counter() - started,
        "python": platform.python_version(), "torch": torch.__version__,
        "machine": platform.machine(), "threads": 1,
    }
    path = out / "oneshot.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\ntotal {record['seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
