"""Training candidates and weight-sharing searches on a GPU, against the CPU of the same machine.

1. `train`: the `train` evaluator, one sampled architecture per space at the spaces' default
   CIFAR-shaped arguments (3x32x32, the full NAS-Bench-201 network for nb201), on real
   images: 640 of scikit-learn's digits scaled to 32x32 and repeated over 3 channels (the
   content does not change the cost; 512 train, 128 validation). The same architecture,
   seed and epochs on `cuda` and on the CPU with all its cores: seconds per epoch,
   validation accuracy of both, and the eval-mode batch-1 latency on each.
2. `search_step`: darts against pc-darts (K=4) on the `darts` space at DARTS's own search
   settings (16 channels, 8 cells, batch 64, 3x32x32): median step time and
   `torch.cuda.max_memory_allocated` over the steps.
3. `searches`: darts (1st and 2nd order), pc-darts, rarts and a one-shot mbconv supernet on
   640 8x8 digits, seconds per epoch on the GPU and on one CPU thread (a search's default
   `threads`), and, on the GPU with and without `deterministic`, whether two runs end
   alike and whether a search stopped after its first epoch and resumed ends exactly where
   an uninterrupted one does (`torch.equal` of every architecture weight; on the CPU both
   hold, tests check that).
The train section also repeats each GPU trial, with and without `deterministic`.

    python bench/gpu.py           # needs a CUDA device (a few minutes on an H200)
    python bench/gpu.py --quick   # CI smoke test (< 60 s): without CUDA only the CPU
                                  # side runs, on tiny settings, and says so

Writes bench/results/gpu.json (`--quick`: a fresh temporary folder; `--out DIR` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.weight_sharing import bench_steps  # noqa: E402
from search_spaces import get_space  # noqa: E402
from workers.evaluators import get_evaluator  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SPACES = ("nb201", "darts", "mbconv", "hybrid", "quant")
FULL = {"train": {"epochs": 3, "cpu_epochs": 1, "batch": 64, "spaces": SPACES, "limit": 640},
        "step": {"channels": 16, "cells": 8, "batch": 64, "steps": 10},
        "searches": {"epochs": 4, "cpu_epochs": 1, "limit": 640}}
QUICK = {"train": {"epochs": 1, "cpu_epochs": 1, "batch": 64, "spaces": ("nb201",),
                   "limit": 128},
         "step": {"channels": 8, "cells": 3, "batch": 16, "steps": 2},
         "searches": {"epochs": 2, "cpu_epochs": 1, "limit": 128}}
SEARCHES = {"darts-1st": ("darts", "nb201", {"order": 1}),
            "darts-2nd": ("darts", "nb201", {"order": 2}),
            "pc-darts": ("pc-darts", "nb201", {"k": 4}),
            "rarts": ("rarts", "nb201", {}),
            "oneshot-mbconv": ("oneshot", "mbconv", {"latency": "none", "population": 10,
                                                      "generations": 2, "top_k": 2})}
ONESHOT_MBCONV = {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24],
                  "stage_strides": [2, 2], "stem_channels": 8, "head_channels": 32}


def digits_32(folder: Path) -> dict:
    """scikit-learn's digits as 32x32 RGB images in an npz the train evaluator reads."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    big = np.kron(digits.images, np.ones((4, 4))) * (255.0 / 16.0)
    x = np.repeat(big[..., None], 3, axis=3).astype(np.uint8)
    path = folder / "digits32.npz"
    np.savez(path, x=x, y=digits.target)
    return {"kind": "npz", "path": str(path)}


# ---- 1. the train evaluator -----------------------------------------------------------------
def train_once(space_name: str, arch: dict, data: dict, device: str, epochs: int,
               settings: dict, deterministic: bool = False) -> dict:
    space = get_space(space_name)
    if settings.get("limit"):
        data = {**data, "limit": settings["limit"]}
    threads = (os.cpu_count() or 1) if device == "cpu" else 1
    evaluator = get_evaluator("train", space, dataset=data, epochs=epochs,
                              batch_size=settings["batch"], device=device, threads=threads,
                              latency_repeats=10, save_weights=False,
                              deterministic=deterministic)
    start = time.perf_counter()
    evaluation = evaluator.evaluate(arch, space.key(arch))
    wall = time.perf_counter() - start
    latency = {m.device: m.value for m in evaluation.measurements}
    return {"device": device, "threads": threads, "epochs": epochs,
            "deterministic": deterministic,
            "seconds_per_epoch": evaluation.metrics["train_time_s"] / epochs,
            "trial_seconds": wall, "val_acc": evaluation.metrics["val_acc"],
            "train_loss": evaluation.metrics["train_loss"], "latency_ms": latency}


def same_numbers(a: dict, b: dict) -> bool:
    return (a["val_acc"], a["train_loss"]) == (b["val_acc"], b["train_loss"])


def bench_train(settings: dict, folder: Path, cuda: bool) -> dict:
    data = digits_32(folder)
    out: dict = {}
    for space_name in settings["spaces"]:
        space = get_space(space_name)
        arch = space.sample(np.random.default_rng(0))
        row = {"key": space.key(arch), "params": space.params(arch), "flops": space.flops(arch),
               "cpu": train_once(space_name, arch, data, "cpu", settings["cpu_epochs"],
                                 settings)}
        if cuda:
            row["cuda"] = train_once(space_name, arch, data, "cuda", settings["epochs"],
                                     settings)
            row["cuda_same_epochs_as_cpu"] = train_once(space_name, arch, data, "cuda",
                                                        settings["cpu_epochs"], settings)
            row["speedup_per_epoch"] = (row["cpu"]["seconds_per_epoch"]
                                        / row["cuda"]["seconds_per_epoch"])
            again = train_once(space_name, arch, data, "cuda", settings["epochs"], settings)
            det = [train_once(space_name, arch, data, "cuda", settings["epochs"], settings,
                              deterministic=True) for _ in range(2)]
            row["cuda_repeat_same_numbers"] = same_numbers(row["cuda"], again)
            row["cuda_deterministic"] = det[0]
            row["cuda_deterministic_repeat_same_numbers"] = same_numbers(*det)
        out[space_name] = row
        gpu = (f"cuda {row['cuda']['seconds_per_epoch']:.2f} s/epoch "
               f"(val {row['cuda']['val_acc']:.1f}% after {settings['epochs']}; "
               f"{row['cuda_same_epochs_as_cpu']['val_acc']:.1f}% after "
               f"{settings['cpu_epochs']}), x{row['speedup_per_epoch']:.1f}; repeat same "
               f"numbers {row['cuda_repeat_same_numbers']}, deterministic "
               f"{row['cuda_deterministic']['seconds_per_epoch']:.2f} s/epoch, repeat same "
               f"{row['cuda_deterministic_repeat_same_numbers']}") if cuda else \
            "cuda not measured"
        print(f"  {space_name:<7} {row['flops'] / 1e6:7.1f} MFLOPs  cpu "
              f"{row['cpu']['seconds_per_epoch']:.2f} s/epoch (val {row['cpu']['val_acc']:.1f}%"
              f" after {settings['cpu_epochs']})  {gpu}", flush=True)
    return out


# ---- 2. a search step --------------------------------------------------------------------
def bench_step(settings: dict, folder: Path) -> dict:
    out = bench_steps(settings, folder)  # on CUDA it measures torch.cuda.max_memory_allocated
    for name in ("darts", "pc-darts"):
        print(f"  {name:<9} step {out[name]['step_seconds_median'] * 1000:7.1f} ms  memory "
              f"{out[name]['memory_bytes'] / 2**20:8.1f} MiB ({out[name]['device']})",
              flush=True)
    print(f"  pc-darts / darts: memory {out['ratio']['memory']:.2f}x, step time "
          f"{out['ratio']['step_time']:.2f}x", flush=True)
    return out


# ---- 3. whole searches -------------------------------------------------------------------
def search_run(label: str, device: str, epochs: int, settings: dict, folder: Path,
               stop_after_first: bool = False, deterministic: bool = False):
    from workers.weight_sharing import get_search

    name, space_name, kwargs = SEARCHES[label]
    space = get_space(space_name, **(ONESHOT_MBCONV if space_name == "mbconv" else {}))
    data = {"kind": "digits", **({"limit": settings["limit"]} if settings["limit"] else {})}
    search = get_search(name, space, seed=0, dataset=data, epochs=epochs, batch_size=64,
                        device=device, deterministic=deterministic, **kwargs)
    start = time.perf_counter()
    outcome = search.run(folder, stop=(lambda: True) if stop_after_first else None)
    seconds = time.perf_counter() - start
    return search, outcome, seconds


def architecture_weights(search) -> dict[str, torch.Tensor]:
    """The searched architecture's state: DARTS-family alphas, or the one-shot supernet."""
    if hasattr(search, "alphas"):
        return {k: torch.as_tensor(v) for k, v in search.alphas().items()}
    return {k: v.detach().cpu() for k, v in search.supernet.state_dict().items()}


def compare(a, b) -> dict:
    """Bit identity and the largest difference of two searches' architecture weights."""
    mine, theirs = architecture_weights(a), architecture_weights(b)
    return {"bit_identical": all(torch.equal(mine[k], theirs[k]) for k in mine),
            "max_abs_diff": max(float((mine[k].float() - theirs[k].float()).abs().max())
                                for k in mine)}


def gpu_runs(label: str, settings: dict, folder: Path, deterministic: bool) -> dict:
    """An uninterrupted run (timed), a second one, and one stopped after its first epoch
    and resumed, all on the GPU; the warnings PyTorch gives for ops without a
    deterministic kernel are collected."""
    import warnings

    epochs, mode = settings["epochs"], "det" if deterministic else "default"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        whole, outcome, seconds = search_run(label, "cuda", epochs, settings,
                                             folder / f"{label}-{mode}-1",
                                             deterministic=deterministic)
        again, _, _ = search_run(label, "cuda", epochs, settings, folder / f"{label}-{mode}-2",
                                 deterministic=deterministic)
        search_run(label, "cuda", epochs, settings, folder / f"{label}-{mode}-cut",
                   stop_after_first=True, deterministic=deterministic)
        resumed, rerun, _ = search_run(label, "cuda", epochs, settings,
                                       folder / f"{label}-{mode}-cut",
                                       deterministic=deterministic)
    nondeterministic = sorted({str(w.message).split(" does not have a deterministic")[0]
                               for w in caught if "deterministic" in str(w.message)})
    return {"seconds_per_epoch": seconds / epochs, "repeat": compare(whole, again),
            "resume": compare(whole, resumed), "resumed_from_epoch": rerun.resumed_from_epoch,
            "resume_same_derived": [str(a) for a in rerun.archs[:1]] ==
            [str(a) for a in outcome.archs[:1]],
            "ops_without_deterministic_kernel": nondeterministic}


def bench_searches(settings: dict, folder: Path, cuda: bool) -> dict:
    out: dict = {}
    for label in SEARCHES:
        _, _, cpu_s = search_run(label, "cpu", settings["cpu_epochs"], settings,
                                 folder / f"{label}-cpu")
        row: dict = {"cpu_seconds_per_epoch": cpu_s / settings["cpu_epochs"]}
        line = f"  {label:<15} cpu {row['cpu_seconds_per_epoch']:.2f} s/epoch"
        if cuda:
            for mode, deterministic in (("cuda", False), ("cuda_deterministic", True)):
                runs = gpu_runs(label, settings, folder, deterministic)
                row[mode] = runs
                line += (f"\n    {mode:<18} {runs['seconds_per_epoch']:.2f} s/epoch (x"
                         f"{row['cpu_seconds_per_epoch'] / runs['seconds_per_epoch']:.1f}); "
                         f"repeat identical {runs['repeat']['bit_identical']} "
                         f"({runs['repeat']['max_abs_diff']:.1e}), resume identical "
                         f"{runs['resume']['bit_identical']} "
                         f"({runs['resume']['max_abs_diff']:.1e}), same derived "
                         f"{runs['resume_same_derived']}"
                         + (f"; no deterministic kernel: {runs['ops_without_deterministic_kernel']}"
                            if runs["ops_without_deterministic_kernel"] else ""))
        else:
            line += "  cuda not measured"
        out[label] = row
        print(line, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test (< 60 s)")
    parser.add_argument("--out", type=Path, help="folder for the JSON (default bench/results; "
                        "--quick: a temporary folder)")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        sys.exit("bench/gpu.py: no CUDA device on this machine (run it where torch sees a "
                 "GPU, or --quick for the CPU side only)")
    torch.backends.cudnn.benchmark = False  # the evaluator's setting: results per seed
    machine = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if cuda else None}
    print(f"gpu.py: {machine}" + ("" if cuda else "  -- no CUDA device: GPU side not measured"),
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {"machine": machine, "settings": settings}
        print("1. train evaluator, digits at 32x32x3:", flush=True)
        results["train"] = bench_train(settings["train"], folder, cuda)
        print("2. search step on the darts space:", flush=True)
        results["search_step"] = bench_step(settings["step"], folder) if cuda else \
            "needs CUDA (the CPU figures are bench/weight_sharing.py's)"
        print("3. searches on digits:", flush=True)
        results["searches"] = bench_searches(settings["searches"], folder, cuda)
    out = args.out or (Path(tempfile.mkdtemp()) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out / 'gpu.json'}", flush=True)


if __name__ == "__main__":
    main()
