"""A measured per-operator look-up table (FBNet's recipe) for the NAS-Bench-201 space.

Each candidate operation is timed once at each stage's shape (channels, side), and the
network skeleton (stem, residual reductions, head: the all-`none` cell) once; a cell's
latency is then the skeleton plus, per stage, `cells_per_stage` times the sum of its edges'
operation times. 15 operator timings and one network timing predict all 15,625 cells.
"""

from __future__ import annotations

from typing import Any

from search_spaces.nb201 import OPS, NB201Space

from .latency import measure_latency_ms


def measure_nb201_lut(space: NB201Space, *, threads: int = 1, repeats: int = 30,
                      warmup: int = 10) -> dict[str, Any]:
    """{"skeleton_ms": t, "ops_ms": [[t(op) for op in OPS] for each stage]} on this CPU."""
    from search_spaces.layers.nb201_net import make_op

    skeleton = measure_latency_ms(space.build({"ops": ["none"] * 6}), space.input_shape(),
                                  threads=threads, repeats=repeats, warmup=warmup)["median_ms"]
    ops_ms = []
    for channels, side in space._stages():
        stage = []
        for op in OPS:
            module = make_op(op, channels)
            timing = measure_latency_ms(module, (channels, side, side), threads=threads,
                                        repeats=repeats, warmup=warmup)
            stage.append(timing["median_ms"] if op != "none" else 0.0)
        ops_ms.append(stage)
    return {"skeleton_ms": skeleton, "ops_ms": ops_ms, "ops": list(OPS),
            "cells_per_stage": space.cells_per_stage}


def predict_from_lut(lut: dict[str, Any], ops: list[str]) -> float:
    """Skeleton plus every cell's operations, stage by stage (times the table's `scale`
    when it was calibrated)."""
    index = {op: i for i, op in enumerate(lut["ops"])}
    per_cell = [sum(stage[index[op]] for op in ops) for stage in lut["ops_ms"]]
    return lut["skeleton_ms"] + lut.get("scale", 1.0) * lut["cells_per_stage"] * sum(per_cell)


def calibrate_nb201_lut(lut: dict[str, Any], space: NB201Space, *, samples: int = 8,
                        seed: int = 0, threads: int = 1, repeats: int = 20,
                        warmup: int = 5) -> dict[str, Any]:
    """The table with a `scale` on the operators' sum, fitted (least squares through the
    skeleton) to `samples` whole networks measured here. Operators timed alone run faster
    than inside a network (warm caches, no module overhead between them), so the plain sum
    underestimates cells with many convolutions; one measured scale corrects most of it."""
    import numpy as np

    plain = {**lut, "scale": 1.0}
    rng = np.random.default_rng(seed)
    ops_sum, measured = [], []
    for _ in range(samples):
        arch = space.sample(rng)
        ops_sum.append(predict_from_lut(plain, arch["ops"]) - lut["skeleton_ms"])
        timing = measure_latency_ms(space.build(arch), space.input_shape(), threads=threads,
                                    repeats=repeats, warmup=warmup)
        measured.append(timing["median_ms"] - lut["skeleton_ms"])
    x, y = np.asarray(ops_sum), np.asarray(measured)
    scale = float(x @ y / (x @ x)) if float(x @ x) > 0 else 0.0
    # operators too cheap to tell from timing noise (a tiny network) give no usable fit: a
    # scale <= 0 would make every cell cost the skeleton, so the plain sum is kept
    return {**lut, "scale": scale if scale > 0 else 1.0, "calibration_samples": samples}
