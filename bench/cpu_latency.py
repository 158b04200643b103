"""Latency predictors on this machine's CPU: measure many architectures once (cached under
bench/results/), then predict them from a few hundred.

For `nb201` (default CIFAR network) and `quant` (and any `--spaces`): each architecture's
eager-mode latency, batch 1, one thread, median of repeats after warm-up, appended to
`bench/results/cpu_latency_<space>.jsonl` (a rerun measures only what is missing). Then, as
`bench/latency_predictors.py` does for HW-NAS-Bench: the fitted additive LUT and the GBDT at
100/300/1000 training architectures (median of 5 splits), scored on the rest; for `nb201`
also FBNet's measured per-operator table (15 operator timings, no training); and the
repeatability of the measurements themselves (30 architectures measured again): the noise
floor no predictor can beat.

    python bench/cpu_latency.py                 # 1,500 per space (about 10 min per space)
    python bench/cpu_latency.py --quick         # CI smoke test: 24 architectures, temp cache
"""

from __future__ import annotations

import argparse
import json
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

from predictors.latency import accuracy_report, get_latency_predictor  # noqa: E402
from search_spaces import get_space  # noqa: E402
from workers.latency import device_key, measure_latency_ms  # noqa: E402
from workers.latency_lut import (  # noqa: E402
    calibrate_nb201_lut,
    measure_nb201_lut,
    predict_from_lut,
)

RESULTS = ROOT / "bench" / "results"


def _measure(space, arch, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    return measure_latency_ms(space.build(arch), space.input_shape(arch), repeats=repeats,
                              warmup=5)


def measure_cached(space, n: int, cache: Path, repeats: int) -> dict[str, float]:
    done: dict[str, float] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            record = json.loads(line)
            done[record["key"]] = record["median_ms"]
    rng = np.random.default_rng(0)
    wanted = []
    while len(wanted) < min(n, space.size()):
        key = space.key(space.sample(rng))
        if key not in wanted:
            wanted.append(key)
    started = time.perf_counter()
    with open(cache, "a") as handle:
        for i, key in enumerate(k for k in wanted if k not in done):
            timing = _measure(space, space.from_key(key), repeats)
            done[key] = timing["median_ms"]
            handle.write(json.dumps({"key": key, **timing, "device": device_key()}) + "\n")
            if i % 100 == 99:
                handle.flush()
                print(f"  {space.name}: {i + 1} measured, "
                      f"{(time.perf_counter() - started) / (i + 1):.2f} s each", flush=True)
    return {k: done[k] for k in wanted}


def repeatability(space, keys: list[str], values: dict[str, float], repeats: int
                  ) -> dict[str, float]:
    again = np.array([_measure(space, space.from_key(k), repeats)["median_ms"] for k in keys])
    return accuracy_report(again, np.array([values[k] for k in keys]))


def predictor_rows(space, values: dict[str, float], sizes: list[int], splits: int) -> dict:
    keys = sorted(values)
    archs = [space.from_key(k) for k in keys]
    y = np.array([values[k] for k in keys])
    rows = {}
    for size in sizes:
        if size >= len(keys):
            continue
        for model in ("lut", "gbdt"):
            reports = []
            for split in range(splits):
                order = np.random.default_rng(split).permutation(len(keys))
                train, test = order[:size], order[size:]
                predictor = get_latency_predictor(model, space).fit(
                    [archs[i] for i in train], y[train])
                reports.append(accuracy_report(predictor.predict([archs[i] for i in test]),
                                               y[test]))
            rows[f"{model}@{size}"] = {k: statistics.median(r[k] for r in reports)
                                       for k in ("within_10pct", "within_5pct", "rmse",
                                                 "spearman")}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--spaces", default="nb201,quant")
    parser.add_argument("-n", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    n = 24 if args.quick else args.n
    sizes = [8, 16] if args.quick else [100, 300, 1000]
    splits = 1 if args.quick else 5
    folder = Path(tempfile.mkdtemp(prefix="nas-bench-")) if args.quick else RESULTS
    torch.set_num_threads(1)
    summary = {"device": device_key(), "n": n, "results": {}}
    for name in args.spaces.split(","):
        space = get_space(name)
        values = measure_cached(space, n, folder / f"cpu_latency_{name}.jsonl", args.repeats)
        print(f"{name}: {len(values)} architectures on {device_key()}, median "
              f"{statistics.median(values.values()):.2f} ms")
        result = predictor_rows(space, values, sizes, splits)
        keys = sorted(values)[: min(30, len(values))]
        result["repeatability"] = repeatability(space, keys, values, args.repeats)
        if name == "nb201":
            lut = measure_nb201_lut(space, repeats=args.repeats)
            predicted = np.array([predict_from_lut(lut, space.from_key(k)["ops"])
                                  for k in sorted(values)])
            actual = np.array([values[k] for k in sorted(values)])
            result["measured_lut"] = accuracy_report(predicted, actual)
            # FBNet's table scaled to 8 whole networks measured afresh (what `fbnet` uses)
            calibrated = calibrate_nb201_lut(lut, space, repeats=args.repeats)
            result["calibrated_lut"] = accuracy_report(np.array(
                [predict_from_lut(calibrated, space.from_key(k)["ops"])
                 for k in sorted(values)]), actual)
        summary["results"][name] = result
        for label, row in result.items():
            print(f"  {label:14} {100 * row['within_10pct']:5.1f}% within 10%, "
                  f"{100 * row['within_5pct']:5.1f}% within 5%, RMSE {row['rmse']:.3f} ms, "
                  f"Spearman {row['spearman']:.3f}")
    path = folder / "cpu_latency.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
