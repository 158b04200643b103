"""Where a worker runs torch: the `device` argument of training and weight-sharing searches.

`auto` is CUDA when the worker process sees a GPU, else the CPU. On Ray a trial task sees a
GPU only when it asked for a share of one (Ray empties `CUDA_VISIBLE_DEVICES` for tasks
that ask for none), so `auto` follows the cluster: GPU nodes train on their GPUs, CPU
nodes on their cores.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from search_spaces.validation import ArgumentError, flag

CHOICES = "auto, cpu, cuda or cuda:N"


def check_device(field: str, value: Any) -> str:
    """`value` if it names a device (`auto`, `cpu`, `cuda`, `cuda:N`), else `ArgumentError`
    naming `field` (the component's argument, e.g. `device`)."""
    if isinstance(value, str) and (value in ("auto", "cpu", "cuda")
                                   or re.fullmatch(r"cuda:\d+", value)):
        return value
    raise ArgumentError(field, f"must be {CHOICES}, got {value!r}")


def check_deterministic(field: str, value: Any) -> bool:
    """`value` if it is a boolean (the `deterministic` argument), else `ArgumentError`."""
    return flag(field, value)


def resolve_device(field: str, name: str) -> Any:
    """The `torch.device` for `name` on this worker; ValueError (naming `field`) when it asks
    for a GPU this worker does not have."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{field} is {name!r} but this worker has no CUDA device")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"{field} is {name!r} but this worker has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def gpu_name(device: Any = None) -> str:
    """A short slug for a CUDA device's model, e.g. 'nvidia-h200'."""
    import torch

    name = torch.cuda.get_device_name(device).lower()
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu"


def gpu_device_key(device: Any = None, batch: int = 1) -> str:
    """The measurement device of eager latency on a GPU: `cuda-<model>-b<batch>`."""
    return f"cuda-{gpu_name(device)}-b{batch}"


def gpu_share(cluster_gpus: float, slots: int) -> float:
    """GPUs one trial task asks Ray for so that all `slots` tasks in flight fit on the
    cluster's GPUs at once: a whole GPU when there are enough, else an equal fraction of one
    (Ray packs fractions onto a GPU; `1 / ceil(slots / gpus)`, so 3 slots on 2 GPUs ask for
    0.5 each, which fits, not 0.67, which would leave one waiting). 0 without GPUs."""
    whole = int(cluster_gpus)
    if whole < 1 or slots < 1:
        return 0.0
    if whole >= slots:
        return 1.0
    per_gpu = -(-slots // whole)
    return int(10_000 / per_gpu) / 10_000  # Ray takes at most 4 decimals


@contextlib.contextmanager
def deterministic_cuda(device: Any, enabled: bool = True) -> Iterator[None]:
    """Within the block, CUDA kernels with a deterministic implementation use it (cuDNN's
    deterministic convolutions, no autotuning, cuBLAS with a fixed workspace), so a seeded
    run on the GPU repeats bit for bit where every op it uses has one; an op without one
    warns (PyTorch's `warn_only`) and runs as usual. A no-op on the CPU, which is
    deterministic already. The process-wide settings are restored afterwards."""
    import torch

    if not enabled or getattr(device, "type", device) != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.deterministic, cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.deterministic, cudnn.benchmark = before[2], before[3]
