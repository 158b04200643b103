"""Data-parallel supernet training over N Ray Train workers (`strategy_args.workers: N`).

`WeightSharingSearch.run` with `workers > 1` starts a Ray Train `TorchTrainer` (gloo on CPU,
NCCL on GPUs) of N ranks; every rank builds the same search from the same seed and runs the
ordinary epoch loop (`_run`) with a `DataParallel` in `search.ranks` instead of the 1-rank
`Ranks`. What makes the N ranks one search, generically (a subclass needs nothing for it):

- every optimiser the search holds (any `torch.optim.Optimizer` attribute after `_setup`)
  gets a step pre-hook that averages the gradients of its parameters over the ranks (one
  flat all-reduce), so weights and architecture parameters stay identical on every rank;
- every BatchNorm in training mode (any `F.batch_norm` call, so sliced supernet BNs too)
  normalises with the statistics of the global batch (sum and squared deviations
  all-reduced, differentiable), so a rank's shard is normalised as in a 1-rank run;
- the base class checkpoints on rank 0 only, reports progress and derives on rank 0 only,
  asks rank 0 whether to stop and broadcasts the answer, and after every epoch compares a
  hash of every rank's architecture parameters and whole state (the run fails if they
  differ: the ranks are checked, not assumed, to hold one architecture).

What a method adds (small, and a no-op on 1 rank, which stays bit for bit as before):
`self.ranks.shard(index)` on each global batch of example indices (a contiguous 1/N of it),
`self.ranks.scaled(loss)` before a backward pass (the shard's share of the global mean, so
an uneven last batch weighs as in one rank), `self.ranks.sync_grads(params)` before gradient
clipping (clipping the averaged gradient, not each rank's), `self.ranks.total(values)` for
epoch statistics, and `self.ranks.local()` around work each rank does alone on the same data
(BN recalibration of an extracted subnet). Without them a subclass still trains
data-parallel but each rank sees the whole batch (N times the compute, same result).

Results equal one worker's with the same global batch up to floating-point reduction order
(sums over shards then ranks instead of over the batch); measured figures in
docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_spaces.validation import ArgumentError, int_at_least

if TYPE_CHECKING:
    import torch

    from ._base import SearchOutcome, WeightSharingSearch

#: How often the driver side forwards rank 0's progress records and the stop request (s).
PUMP_S = 0.5
#: Restarts of the worker group after a rank died (each resumes from the last checkpoint).
MAX_FAILURES = 3
#: Where each rank notes its process id (for operators, and the fault-injection tests).
RANKS_DIR = "ranks"


# ---- validation ---------------------------------------------------------------------------------
def check_workers(value: Any) -> int:
    """`workers`: an integer >= 1."""
    return int_at_least("workers", value, 1)


def wants_gpu(device: str, gpus: float) -> bool:
    """Whether the ranks train on GPUs: `cuda`/`cuda:N`, or `auto` on a cluster with GPUs."""
    return device.startswith("cuda") or (device == "auto" and gpus >= 1)


def check_fits(workers: int, device: str, resources: dict[str, float] | None) -> None:
    """ArgumentError naming `workers` when the cluster (`resources`: Ray's cluster resources,
    None when unknown) has fewer CPUs, or GPUs for a GPU search, than ranks."""
    if resources is None or workers <= 1:
        return
    gpus = float(resources.get("GPU", 0))
    if device.startswith("cuda") and workers > gpus:
        raise ArgumentError("workers", f"must be at most the cluster's GPUs ({gpus:g}) with "
                                       f"device {device}, got {workers}")
    cpus = float(resources.get("CPU", 0))
    if not wants_gpu(device, gpus) and workers > cpus:
        raise ArgumentError("workers", f"must be at most the cluster's CPUs ({cpus:g}), "
                                       f"got {workers}")


def known_resources() -> dict[str, float] | None:
    """The resources of the cluster a job would run on, when known without connecting: the
    Ray this process is connected to, else (no `RAY_ADDRESS` / `NAS_RAY_ADDRESS`: a local
    Ray) this machine's CPUs and GPUs; None for a remote cluster not connected to (checked
    when the search starts)."""
    import ray

    if ray.is_initialized():
        return dict(ray.cluster_resources())
    if os.environ.get("RAY_ADDRESS") or os.environ.get("NAS_RAY_ADDRESS"):
        return None
    import torch

    return {"CPU": float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else os.cpu_count() or 1),
            "GPU": float(torch.cuda.device_count())}


# ---- ranks: the 1-rank null object and the data-parallel one -----------------------------------
class Ranks:
    """One rank: every method is the identity, so a 1-rank search runs exactly as before."""

    rank = 0
    size = 1

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch of example indices."""
        return index

    @property
    def fraction(self) -> float:
        """The last shard's share of its global batch (1.0 on one rank)."""
        return 1.0

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate (this rank's share of the global mean, times N)."""
        return loss

    def sync_grads(self, params: Iterable[torch.Tensor]) -> None:
        """Average the `.grad` of `params` over the ranks (before clipping them)."""

    def average(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The rank-average of each tensor (gradients computed with `torch.autograd.grad`)."""
        return tensors

    def total(self, values: list[float]) -> list[float]:
        """The sum over the ranks of each value."""
        return values

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank."""
        return flag

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        return obj

    def attach(self, search: Any) -> None:
        """Hook the search's optimisers (after `_setup`)."""

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """The epoch loop's context (global-batch BatchNorm on N ranks)."""
        yield

    @contextlib.contextmanager
    def local(self) -> Iterator[None]:
        """Work each rank does alone (BatchNorm on its own batch, no collectives)."""
        yield

    def gather(self, value: Any) -> list[Any]:
        """`value` of every rank, in rank order."""
        return [value]


class DataParallel(Ranks):
    """Rank `rank` of `size` in the initialised default `torch.distributed` process group."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size
        self._fraction = 1.0
        self._synced: set[int] = set()
        self._sync_bn = False

    # ---- data --------------------------------------------------------------------------
    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """A contiguous 1/N of the batch (the first ranks one more when it does not divide).
        A batch smaller than N is computed whole on every rank (the average of N equal
        gradients is that gradient)."""
        import torch

        n = len(index)
        if n < self.size:
            self._fraction = 1.0 / self.size
            return index
        local = torch.tensor_split(index, self.size)[self.rank]
        self._fraction = len(local) / n
        return local

    @property
    def fraction(self) -> float:
        return self._fraction

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * (self._fraction * self.size)

    # ---- gradients -----------------------------------------------------------------------
    def sync_grads(self, params: Iterable[torch.Tensor]) -> None:
        params = [p for p in params if p.grad is not None and id(p) not in self._synced]
        if params:
            for p, g in zip(params, self.average([p.grad for p in params]), strict=True):
                p.grad.copy_(g)
        self._synced.update(id(p) for p in params)

    def average(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        import torch
        import torch.distributed as dist

        if not tensors:
            return tensors
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.size
        return [part.view_as(t) for part, t in
                zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]

    def _before_step(self, optimizer: Any, *_: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.sync_grads(params)
        self._synced.difference_update(id(p) for p in params)

    def attach(self, search: Any) -> None:
        import torch

        for value in vars(search).values():
            if isinstance(value, torch.optim.Optimizer):
                value.register_step_pre_hook(self._before_step)

    # ---- values ----------------------------------------------------------------------------
    def total(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return [float(v) for v in t]

    def agree(self, flag: bool) -> bool:
        return bool(self.broadcast(bool(flag)))

    def broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    # ---- BatchNorm over the global batch ------------------------------------------------------
    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        import torch.nn.functional as F

        original = F.batch_norm

        def batch_norm(input: Any, running_mean: Any, running_var: Any, weight: Any = None,
                       bias: Any = None, training: bool = False, momentum: float = 0.1,
                       eps: float = 1e-5) -> Any:
            if not (training and self._sync_bn):
                return original(input, running_mean, running_var, weight, bias, training,
                                momentum, eps)
            return _global_batch_norm(input, running_mean, running_var, weight, bias,
                                      momentum, eps)

        F.batch_norm = batch_norm
        self._sync_bn = True
        try:
            yield
        finally:
            F.batch_norm = original
            self._sync_bn = False

    @contextlib.contextmanager
    def local(self) -> Iterator[None]:
        before, self._sync_bn = self._sync_bn, False
        try:
            yield
        finally:
            self._sync_bn = before


def _global_batch_norm(x: torch.Tensor, running_mean: Any, running_var: Any, weight: Any,
                       bias: Any, momentum: float | None, eps: float) -> torch.Tensor:
    """Training-mode batch norm with the mean and (biased) variance of the batch summed over
    every rank; differentiable (`torch.distributed.nn.functional.all_reduce` sums the
    gradients back), the running statistics updated as `F.batch_norm` does (unbiased)."""
    import torch

    all_reduce = _sum_over_ranks()
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    count = torch.tensor([x.numel() / max(1, x.shape[1])], dtype=x.dtype, device=x.device)
    summed = all_reduce(torch.cat([x.sum(dim=dims), count]))
    n = summed[-1].detach()
    mean = summed[:-1] / n
    centred = x - mean.view(shape)
    var = all_reduce((centred * centred).sum(dim=dims)) / n
    out = centred * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    if running_mean is not None and momentum is not None:
        with torch.no_grad():
            unbiased = var.detach() * (n / (n - 1)) if float(n) > 1 else var.detach()
            running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    return out


_SUM: Any = None


def _sum_over_ranks() -> Callable[[Any], Any]:
    """A differentiable sum over the ranks: all-reduce forward, all-reduce of the gradient
    backward (every rank's loss depends on every rank's share of the statistics)."""
    global _SUM
    if _SUM is None:
        import torch
        import torch.distributed as dist

        class SumOverRanks(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, t: Any) -> Any:
                t = t.clone()
                dist.all_reduce(t)
                return t

            @staticmethod
            def backward(ctx: Any, grad: Any) -> Any:
                grad = grad.clone()
                dist.all_reduce(grad)
                return grad

        _SUM = SumOverRanks.apply
    return _SUM


def state_digest(state: Any) -> str:
    """A short hash of every tensor and value in a (nested) state: equal on two ranks iff
    they hold the same numbers, bit for bit."""
    import torch

    h = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=repr):
                h.update(repr(key).encode())
                walk(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif hasattr(value, "tobytes"):
            h.update(value.tobytes())
        else:
            h.update(repr(value).encode())

    walk(state)
    return h.hexdigest()[:16]


# ---- the driver side ------------------------------------------------------------------------
class _Relay:
    """A Ray actor between the driver side and rank 0: progress records, the stop request
    and the outcome."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.stop = False
        self.outcome: Any = None

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def drain(self) -> list[dict[str, Any]]:
        records, self.records = self.records, []
        return records

    def request_stop(self) -> None:
        self.stop = True

    def stopped(self) -> bool:
        return self.stop

    def set_outcome(self, outcome: Any) -> None:
        self.outcome = outcome

    def get_outcome(self) -> Any:
        return self.outcome


def run_data_parallel(search: WeightSharingSearch, folder: Path,
                      stop: Callable[[], bool] | None,
                      progress: Callable[[dict[str, Any]], None] | None) -> SearchOutcome:
    """Run `search` on `search.workers` Ray Train ranks (on the Ray this process is connected
    to, else a local one); rank 0's outcome. A rank that dies restarts the worker group
    (up to `MAX_FAILURES` times), which resumes from the last checkpoint."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ..executors.ray import connect_ray

    ray = connect_ray()
    resources = dict(ray.cluster_resources())
    check_fits(search.workers, search.device_name, resources)
    gpu = wants_gpu(search.device_name, float(resources.get("GPU", 0)))
    relay = ray.remote(num_cpus=0)(_Relay).remote()
    trainer = TorchTrainer(
        _rank_main,
        train_loop_config={"search": search, "folder": str(folder), "relay": relay},
        scaling_config=ScalingConfig(num_workers=search.workers, use_gpu=gpu,
                                     resources_per_worker={"GPU": 1} if gpu else {"CPU": 1}),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name=f"search-{os.getpid()}-{time.time_ns()}",
                             storage_path=str(folder.resolve() / "ray-train"),
                             failure_config=FailureConfig(max_failures=MAX_FAILURES)))
    done = threading.Event()
    pump = threading.Thread(target=_pump, args=(ray, relay, stop, progress, done),
                            name="nas-search-relay", daemon=True)
    pump.start()
    try:
        trainer.fit()
    finally:
        done.set()
        pump.join()
    result = ray.get(relay.get_outcome.remote())
    ray.kill(relay)
    if result is None:
        raise RuntimeError("the data-parallel search ended without an outcome from rank 0")
    outcome, search.device = result  # where the ranks trained (rank 0's device)
    return outcome


def _pump(ray: Any, relay: Any, stop: Callable[[], bool] | None,
          progress: Callable[[dict[str, Any]], None] | None, done: threading.Event) -> None:
    """Forward rank 0's records to `progress` and `stop()` to rank 0, until `done`."""
    asked = False
    while True:
        finished = done.wait(PUMP_S)
        try:
            records = ray.get(relay.drain.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress is only for showing
            records = []
        for record in records:
            if progress is not None:
                progress(record)
        if not asked and stop is not None and stop():
            relay.request_stop.remote()
            asked = True
        if finished:
            return


def _rank_main(config: dict[str, Any]) -> None:
    """One rank (a Ray Train worker): the search's ordinary epoch loop on its shards."""
    import ray
    import ray.train

    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    search: WeightSharingSearch = config["search"]
    relay = config["relay"]
    folder = Path(config["folder"])
    search.ranks = DataParallel(rank, size)
    if search.device_name != "cpu":
        import torch

        if torch.cuda.is_available():  # this rank's GPU (Ray Train sets the visible devices)
            import ray.train.torch

            search.device_name = str(ray.train.torch.get_device())
    note = folder / RANKS_DIR
    note.mkdir(parents=True, exist_ok=True)
    (note / f"rank-{rank}.pid").write_text(f"{os.getpid()} {socket.gethostname()}\n")
    if rank == 0:
        def stop() -> bool:
            return bool(ray.get(relay.stopped.remote()))

        def progress(record: dict[str, Any]) -> None:
            relay.add.remote(record)

        outcome = search.run(folder, stop=stop, progress=progress)
        ray.get(relay.set_outcome.remote((outcome, str(search.device))))
    else:
        search.run(folder)
