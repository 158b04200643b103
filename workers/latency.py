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


RUNTIMES = ("eager", "torchscript", "onnx")


def device_key(threads: int = 1, batch: int = 1, runtime: str = "eager") -> str:
    """The device a measurement belongs to: hardware plus the settings that change it
    (`cpu-<model>-t<threads>-b<batch>`, with `-ts` / `-ort` for TorchScript / ONNX Runtime)."""
    suffix = {"eager": "", "torchscript": "-ts", "onnx": "-ort"}[runtime]
    return f"cpu-{cpu_name()}-t{threads}-b{batch}{suffix}"


def measure_latency_ms(
    model: Any,
    input_shape: tuple[int, ...],
    *,
    batch: int = 1,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 20,
    runtime: str = "eager",
    device: str = "cpu",
) -> dict[str, float]:
    """Median and spread (IQR) in milliseconds of `repeats` timed forward passes, in torch
    eager mode, as a traced TorchScript module or in ONNX Runtime. On a CUDA `device` (eager
    only; the model must already be there) each pass is timed up to the GPU's finishing it."""
    import torch

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    on_gpu = device.startswith("cuda")
    if on_gpu and runtime != "eager":
        raise ValueError(f"GPU latency is measured in eager mode only, not {runtime!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        x = torch.randn(batch, *input_shape).to(device)
        run = _runner(model, x, runtime, threads)
        if on_gpu:
            forward = run

            def run() -> None:
                forward()
                torch.cuda.synchronize(x.device)
        timings = []
        with torch.inference_mode():
            for _ in range(warmup):
                run()
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                timings.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    quartiles = statistics.quantiles(timings, n=4)
    return {"median_ms": statistics.median(timings), "iqr_ms": quartiles[2] - quartiles[0]}


def _runner(model: Any, x: Any, runtime: str, threads: int) -> Any:
    """A no-argument callable running one forward pass of `model` on `x` in `runtime`."""
    import torch

    if runtime == "eager":
        return lambda: model(x)
    if runtime == "torchscript":
        with torch.no_grad():
            traced = torch.jit.freeze(torch.jit.trace(model, x))
        return lambda: traced(x)
    import io
    import warnings

    import onnxruntime

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(buffer.getvalue(), options,
                                           providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)
