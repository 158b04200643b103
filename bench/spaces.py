"""Every registered search space: build and forward time, params and FLOPs ranges of sampled
architectures, the cost of the analytic cost model against building, and for spaces that
produce INT8 models (`quant`) the measured INT8 / FP32 latency ratio on this CPU.

Figures are medians over the sample (the machine is small and noisy); timings use one torch
thread and batch 1, like the latency the `train` evaluator stores.

    python bench/spaces.py            # 100 architectures per space, CIFAR-shaped inputs
    python bench/spaces.py --quick    # CI smoke test: 8 per space
    python bench/spaces.py --json bench/results/spaces.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from search_spaces import get_space, list_spaces  # noqa: E402
from workers.latency import measure_latency_ms  # noqa: E402


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _time_space(name: str, n: int, seed: int, repeats: int) -> dict:
    space = get_space(name)
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(n)]
    build_ms, forward_ms, analytic_us, params, flops = [], [], [], [], []
    for arch in archs:
        start = time.perf_counter()
        params.append(space.params(arch))
        flops.append(space.flops(arch))
        analytic_us.append(_ms(start) * 1000.0)
        start = time.perf_counter()
        model = space.build(arch).eval()
        build_ms.append(_ms(start))
        forward_ms.append(measure_latency_ms(model, space.input_shape(arch), warmup=2,
                                             repeats=repeats)["median_ms"])
    row = {
        "space": name, "size": space.size(), "n": n,
        "build_ms": statistics.median(build_ms), "forward_ms": statistics.median(forward_ms),
        "forward_ms_range": [min(forward_ms), max(forward_ms)],
        "analytic_cost_us": statistics.median(analytic_us),
        "params_range": [min(params), max(params)], "params_median": statistics.median(params),
        "flops_range": [min(flops), max(flops)], "flops_median": statistics.median(flops),
    }
    if callable(getattr(space, "int8_model", None)):
        row.update(_int8_ratio(space, archs[: max(2, n // 5)], repeats))
    return row


def _int8_ratio(space, archs: list[dict], repeats: int) -> dict:
    """Median INT8/FP32 latency ratio: the INT8 model (calibrated on noise) against the same
    architecture's plain FP32 network (fake quantization off), batch 1, one thread."""
    ratios, fp32, int8 = [], [], []
    for arch in archs:
        shape = space.input_shape(arch)
        torch.manual_seed(0)
        model = space.build(arch).eval()
        quantized = space.int8_model(arch, torch.randn(32, *shape), model=model)
        plain = space.build(arch, fake_quant=False).eval()
        fp = measure_latency_ms(plain, shape, warmup=3, repeats=repeats)["median_ms"]
        q = measure_latency_ms(quantized, shape, warmup=3, repeats=repeats)["median_ms"]
        fp32.append(fp)
        int8.append(q)
        ratios.append(q / fp)
    return {"int8_fp32_ratio": statistics.median(ratios), "fp32_ms": statistics.median(fp32),
            "int8_ms": statistics.median(int8), "int8_n": len(archs)}


def _print(rows: list[dict]) -> None:
    header = (f"{'space':8} {'size':>10} {'build ms':>9} {'fwd ms':>8} {'cost us':>8} "
              f"{'params (min-max)':>22} {'MFLOPs (min-max)':>20}")
    print(header)
    for r in rows:
        p, f = r["params_range"], r["flops_range"]
        size = f"{r['size']:.2e}" if r["size"] > 10**6 else f"{r['size']:,}"
        print(f"{r['space']:8} {size:>10} {r['build_ms']:9.1f} {r['forward_ms']:8.2f} "
              f"{r['analytic_cost_us']:8.0f} {p[0]:>10,}-{p[1]:<11,} "
              f"{f[0] / 1e6:9.1f}-{f[1] / 1e6:<9.1f}")
    for r in rows:
        if "int8_fp32_ratio" in r:
            print(f"{r['space']}: INT8 / FP32 latency ratio {r['int8_fp32_ratio']:.2f} "
                  f"(median of {r['int8_n']} archs: FP32 {r['fp32_ms']:.2f} ms, INT8 "
                  f"{r['int8_ms']:.2f} ms, batch 1, 1 thread)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 architectures per space")
    parser.add_argument("-n", type=int, default=100, help="architectures per space")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--spaces", nargs="*", default=None, help="only these spaces")
    args = parser.parse_args()
    n = 8 if args.quick else args.n
    repeats = 5 if args.quick else 20
    torch.set_num_threads(1)
    rows = [_time_space(name, n, seed=0, repeats=repeats)
            for name in (args.spaces or list_spaces())]
    _print(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
