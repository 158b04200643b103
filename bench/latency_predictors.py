"""Latency predictors on HW-NAS-Bench: how well a device's latency is predicted from a few
hundred measured NAS-Bench-201 cells.

For each device column of the shipped HW-NAS-Bench CIFAR-10 table, for each training size,
over several random splits: fit the additive look-up table (`lut`) and the GBDT (`gbdt`)
on the training cells and report, on all the other cells, the share of predictions within
+-10% and +-5% of the measured latency, the RMSE and the Spearman rank correlation
(medians over splits). Goal from the issue: >= 95% within +-10% from <= 500 measurements.

The noise floor of each column is estimated too: the GBDT fitted on 80% of the cells and
scored on the other 20% -- what no predictor on these features can beat much.

    python bench/latency_predictors.py            # sizes 100/300/500/1000, 5 splits
    python bench/latency_predictors.py --quick    # CI smoke test (< 60 s)
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

from predictors.latency import accuracy_report, get_latency_predictor  # noqa: E402
from search_spaces import get_space  # noqa: E402
from workers.tables import load_table  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEVICES = ("edgegpu", "raspi4", "pixel3", "fpga")
METRICS = ("within_10pct", "within_5pct", "rmse", "spearman")


def _device_cells(device: str) -> tuple[list[str], np.ndarray]:
    rows = load_table("hw-nas-bench-cifar10").rows
    column = f"{device}_latency_ms"
    keys = sorted(k for k, r in rows.items() if column in r)
    return keys, np.array([rows[k][column] for k in keys])


def _evaluate(space, keys, values, size: int, model: str, split: int) -> dict[str, float]:
    order = np.random.default_rng(split).permutation(len(keys))
    train, test = order[:size], order[size:]
    archs = [space.from_key(k) for k in keys]
    started = time.perf_counter()
    predictor = get_latency_predictor(model, space).fit([archs[i] for i in train],
                                                        values[train])
    fit_s = time.perf_counter() - started
    report = accuracy_report(predictor.predict([archs[i] for i in test]), values[test])
    report["fit_s"] = fit_s
    return report


def _median_report(reports: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in reports) for k in (*METRICS, "fit_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test")
    parser.add_argument("--sizes", default="100,300,500,1000")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = [100, 300] if args.quick else [int(s) for s in args.sizes.split(",")]
    splits = 1 if args.quick else args.splits
    devices = ("edgegpu", "pixel3") if args.quick else DEVICES
    space = get_space("nb201")
    results: dict[str, dict] = {}
    print(f"HW-NAS-Bench CIFAR-10, NAS-Bench-201 cells; medians over {splits} random splits; "
          "scored on every cell not used for training\n")
    print(f"{'device':8} {'model':5} {'train':>5}  {'<=10%':>6} {'<=5%':>6} {'RMSE ms':>8} "
          f"{'Spearman':>8} {'fit s':>6}")
    for device in devices:
        keys, values = _device_cells(device)
        results[device] = {"cells": len(keys), "median_ms": float(np.median(values))}
        for size in sizes:
            for model in ("lut", "gbdt"):
                row = _median_report([_evaluate(space, keys, values, size, model, s)
                                      for s in range(splits)])
                results[device][f"{model}@{size}"] = row
                print(f"{device:8} {model:5} {size:>5}  {100 * row['within_10pct']:5.1f}% "
                      f"{100 * row['within_5pct']:5.1f}% {row['rmse']:8.3f} "
                      f"{row['spearman']:8.3f} {row['fit_s']:6.2f}")
        if not args.quick:
            floor = _evaluate(space, keys, values, int(0.8 * len(keys)), "gbdt", 0)
            results[device]["gbdt@80pct"] = floor
            print(f"{device:8} gbdt  80% of cells (noise floor): "
                  f"{100 * floor['within_10pct']:.1f}% within 10%, Spearman "
                  f"{floor['spearman']:.3f}")
    out = args.out or (Path(tempfile.mkdtemp(prefix="nas-bench-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "latency_predictors.json"
    path.write_text(json.dumps({"splits": splits, "sizes": sizes, "results": results},
                               indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
