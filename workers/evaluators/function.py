"""`function` evaluator: the user's own `evaluate(arch, ctx) -> dict[str, float]`.

```yaml
evaluator: function
evaluator_args: {function: "mymod:evaluate", epochs: 3}   # the rest is ctx.args
```

The function is found as Python finds `mymod` (a module in the current folder too, like
`uvicorn main:app`); on Ray every worker must import it as well. It gets the architecture
(a plain dict) and a `TrialContext`; it returns metric -> finite number. A return that is
not such a dict fails the trial with the reason (the search goes on). `ctx.report(step,
**metrics)` records intermediate values, and raises `TrialPruned` when the job's
`early_stopping` rule stops the trial: let it propagate, the trial is stored as `pruned`
with its last reported metrics.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError

from ..early_stopping import TrialPruned
from ..torch_device import check_device, resolve_device
from ._base import Evaluation, EvaluationError, Evaluator, register_evaluator

MAX_METRIC = 64  # measurements.metric / trial_reports.metric is VARCHAR(64)


def resolve_function(reference: Any, field: str) -> Callable[..., Any]:
    """The callable named by `module:attr` (`search_spaces.registry.resolve_reference`: a
    module in the current folder is found too, as `uvicorn main:app` does). `ArgumentError`
    in one line naming `field` for a malformed reference, a missing module or attribute, or
    an object that is not callable."""
    from search_spaces.registry import a_kind_of, resolve_reference

    if not isinstance(reference, str):
        raise ArgumentError(field, f"must read 'module:function', got {reference!r:.80}")
    try:
        target = resolve_reference(reference)
    except ValueError as exc:
        raise ArgumentError(field, str(exc)) from None
    if not callable(target):
        raise ArgumentError(field, f"{reference!r} is {a_kind_of(target)}, not callable")
    return target


def trial_seed(job_seed: int, number: int) -> int:
    """A 32-bit seed for trial `number` of a job seeded `job_seed`: stable across processes
    and machines (no `hash()`), different for every trial."""
    digest = hashlib.sha256(f"{job_seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class TrialContext:
    """What the user's `evaluate(arch, ctx)` gets besides the architecture.

    `seed`: the job's seed combined with the trial number (`trial_seed`); `trial`: the
    trial number; `attempt`: 1, or more when a dead worker's trial runs again; `device`:
    "cpu" or the CUDA device this worker trains on (as the `train` evaluator picks it);
    `gpus`: the GPU share of the Ray task (0 elsewhere); `scratch_dir`: a folder of this
    trial that a retry of it finds again (None outside a job); `args`: the user's
    `evaluator_args` without `function` and `device`."""

    seed: int
    trial: int
    attempt: int = 1
    scratch_dir: Path | None = None
    args: dict[str, Any] = field(default_factory=dict)
    gpus: float = 0.0
    device_arg: str = "auto"
    #: (step, metric, value) reported so far
    reports: list[tuple[int, str, float]] = field(default_factory=list)
    pruner: Any = None
    metric: str | None = None  # the early-stopping metric, when there is a pruner
    last: dict[str, float] = field(default_factory=dict)

    @property
    def device(self) -> str:
        """"cpu" or e.g. "cuda" (torch is imported on first use only)."""
        if self.device_arg == "cpu":
            return "cpu"
        return str(resolve_device("evaluator_args.device", self.device_arg))

    def report(self, step: int, **metrics: float) -> None:
        """Record intermediate `metrics` at `step` (an int >= 0); raises `TrialPruned` when
        the job's early-stopping rule says this trial stops here."""
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"ctx.report: step must be an integer >= 0, got {step!r}")
        clean = {name: _number(name, value, "ctx.report") for name, value in metrics.items()}
        self.reports.extend((step, name, value) for name, value in clean.items())
        self.last.update(clean)
        if self.pruner is not None and self.metric in clean and \
                self.pruner.report(self.trial, step, clean[self.metric]):
            raise TrialPruned(f"pruned at step {step} ({self.metric} = "
                              f"{clean[self.metric]:g})")


def _number(name: Any, value: Any, where: str) -> float:
    if not isinstance(name, str) or not name or len(name) > MAX_METRIC:
        raise EvaluationError(f"{where}: metric names must be strings of 1 to {MAX_METRIC} "
                              f"characters, got {name!r:.80}")
    if not isinstance(value, bool) and hasattr(value, "item"):  # numpy and torch scalars
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # an array of several values
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EvaluationError(f"{where}: metric {name!r} is a {type(value).__name__}, "
                              "not a number")
    value = float(value)
    if not math.isfinite(value):
        raise EvaluationError(f"{where}: metric {name!r} is {value}, not a finite number")
    return value


def _ray_gpus() -> float:
    """The GPU share of the current Ray task, 0 outside one."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return 0.0
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return 0.0
    return float(context.get_assigned_resources().get("GPU", 0.0))


@register_evaluator
class FunctionEvaluator(Evaluator):
    """`evaluator_args`: `function` ("module:function", required), `device` (auto | cpu |
    cuda | cuda:N, default auto: on Ray a trial then asks for a GPU share where the
    cluster has GPUs), anything else is passed to the function as `ctx.args`."""

    description = ("your own `evaluate(arch, ctx) -> dict` (`function: module:attr`), with "
                   "reports for early stopping")

    name = "function"
    #: `ctx.report` gives intermediate values: the job may set `early_stopping`.
    reports_steps: ClassVar[bool] = True
    #: Unknown `evaluator_args` are the user's (`ctx.args`), not a mistake (`check_evaluator`).
    passes_extra_args: ClassVar[bool] = True

    def __init__(self, space: SearchSpace, function: Any = None, device: Any = "auto",
                 **args: Any) -> None:
        super().__init__(space)
        if function is None:
            raise ArgumentError("function", "is required ('module:function')")
        self.function = resolve_function(function, "function")
        self.device_arg = check_device("device", device)
        self.args = args

    @classmethod
    def uses_gpu(cls, args: dict[str, Any]) -> bool:
        return args.get("device", "auto") != "cpu"

    def context(self, number: int = 0, seed: int = 0) -> TrialContext:
        """The context of the trial being evaluated (`workers.task.current_trial`), or of
        trial `number` with job seed `seed` when called outside a job (tests, checks)."""
        from ..task import current_trial

        scope = current_trial()
        if scope is None:
            return TrialContext(trial_seed(seed, number), number, args=dict(self.args),
                                device_arg=self.device_arg)
        task = scope.task
        scratch = None
        if task.scratch_dir:
            scratch = Path(task.scratch_dir)
            scratch.mkdir(parents=True, exist_ok=True)
        pruner = task.pruner  # a `Pruner` or a `RayPrunerHandle`: both name their metric
        return TrialContext(trial_seed(task.job_seed, task.number), task.number, task.attempt,
                            scratch, dict(self.args), _ray_gpus(), self.device_arg,
                            scope.reports, pruner, pruner.metric if pruner else None)

    def evaluate(self, arch: Arch, key: str) -> Evaluation:
        ctx = self.context()
        try:
            returned = self.function(arch, ctx)
        except TrialPruned as exc:
            return Evaluation(dict(ctx.last), pruned=str(exc) or "pruned")
        return Evaluation(check_metrics(returned))


def check_metrics(returned: Any) -> dict[str, float]:
    """The user function's return as metric -> float; EvaluationError saying what is wrong
    (the trial fails with it)."""
    if not isinstance(returned, dict):
        raise EvaluationError(f"evaluate returned a {type(returned).__name__}, not a dict of "
                              "metric name -> number")
    if not returned:
        raise EvaluationError("evaluate returned an empty dict: no metric to score")
    return {name: _number(name, value, "evaluate returned") for name, value in
            returned.items()}
