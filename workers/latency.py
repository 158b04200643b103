"""Latency measured on the worker: torch eager, batch 1, one thread, warm-up, median."""

from __future__ import annotations

import platform
import re
import statistics
import time
from functools import cache
from typing import Any


@cache
def cpu_name() -> str:
    """A short slug for this CPU model, e.g. 'amd-epyc-7b13'."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1]
                    break
    except OSError:
        pass
    name = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*$|\d+-core", "", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cpu"


def device_key(threads: int = 1, batch: int = 1) -> str:
    """The device a measurement belongs to: hardware plus the settings that change it."""
    return f"cpu-{cpu_name()}-t{threads}-b{batch}"


def measure_latency_ms(
    model: Any,
    input_shape: tuple[int, ...],
    *,
    batch: int = 1,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 20,
) -> dict[str, float]:
    """Median and spread (IQR) in milliseconds of `repeats` timed forward passes."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        x = torch.randn(batch, *input_shape)
        timings = []
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                timings.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    quartiles = statistics.quantiles(timings, n=4)
    return {"median_ms": statistics.median(timings), "iqr_ms": quartiles[2] - quartiles[0]}
