"""What travels between the driver and a worker: plain, picklable records."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from search_spaces import get_space

from .evaluators import EvaluationError, Evaluator, get_evaluator


@dataclass(frozen=True)
class EvaluatorSpec:
    """Everything a worker needs to build the job's evaluator."""

    space: str
    space_args: dict[str, Any]
    evaluator: str
    evaluator_args: dict[str, Any]

    def cache_key(self) -> str:
        import json

        return json.dumps([self.space, self.space_args, self.evaluator, self.evaluator_args],
                          sort_keys=True)


@dataclass
class TrialTask:
    number: int
    key: str
    arch: dict[str, Any]
    attempt: int = 1
    #: Values stored earlier under the evaluator's `cache_device()` (metric -> value).
    cached: dict[str, float] = field(default_factory=dict)
    #: The job's `trial_timeout_s`: the evaluation fails once it has run this long.
    timeout_s: float | None = None
    #: When the job's seconds budget runs out (epoch seconds): the evaluation fails then.
    deadline: float | None = None
    #: The job's seed (an evaluator combines it with `number`, see `function.trial_seed`).
    job_seed: int = 0
    #: A folder of this trial that a retry finds again (`<artifact dir>/trials/<number>`).
    scratch_dir: str | None = None
    #: The job's early-stopping pruner (`workers.early_stopping`): the object itself
    #: in-process, a `RayPrunerHandle` on Ray; None without early stopping.
    pruner: Any = None


@dataclass
class TrialResult:
    """What a worker returns for a trial, as evaluated. The driver scores it into a
    `nas.storage.ScoredResult` (the form stored); see docs/design.md, Data model."""

    number: int
    key: str
    status: str  # completed | failed | pruned
    attempt: int
    metrics: dict[str, float] = field(default_factory=dict)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    params: int | None = None
    flops: int | None = None
    error: str | None = None
    weights: bytes | None = None
    worker: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    #: Intermediate reports (step, metric, value), whatever the status.
    reports: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass
class TrialScope:
    """The trial an evaluator is evaluating (`current_trial()`), and what it reported."""

    task: TrialTask
    reports: list[tuple[int, str, float]] = field(default_factory=list)


_CURRENT: ContextVar[TrialScope | None] = ContextVar("nas_current_trial", default=None)


def current_trial() -> TrialScope | None:
    """The trial being evaluated in this thread (None outside `evaluate_one`): evaluators
    whose `evaluate(arch, key)` needs more (the `function` evaluator's seed, scratch folder
    and pruner) read it here, so the `Evaluator` contract stays `evaluate(arch, key)`."""
    return _CURRENT.get()


_EVALUATORS: dict[str, Evaluator] = {}


def build_evaluator(spec: EvaluatorSpec) -> Evaluator:
    """The evaluator of a spec, built once per process (tables load once per worker)."""
    key = spec.cache_key()
    evaluator = _EVALUATORS.get(key)
    if evaluator is None:
        space = get_space(spec.space, **spec.space_args)
        evaluator = get_evaluator(spec.evaluator, space, **spec.evaluator_args)
        _EVALUATORS[key] = evaluator
    return evaluator


def worker_name() -> str:
    """`host:pid`, plus `:node=<first 8 hex digits of the Ray node id>` in a Ray worker: on
    one machine several Ray nodes share the host name, and the node says where a trial ran.
    A Ray task given GPUs adds `:gpu=<ids>` (Ray's `CUDA_VISIBLE_DEVICES` for the task)."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    node = _ray_node_id()
    if not node:
        return name
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return f"{name}:node={node[:8]}" + (f":gpu={gpus}" if gpus else "")


def _ray_node_id() -> str | None:
    """The Ray node id of this process when it is a Ray worker (not a driver), else None.
    Never imports ray: a process that has not imported it is not a Ray worker."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return None
    return context.get_node_id()


def _time_limit(task: TrialTask, now: float) -> tuple[float | None, str]:
    """Seconds the evaluation may run (None: no limit) and the error it fails with then."""
    limit, reason = task.timeout_s, ""
    if limit is not None:
        reason = f"timed out after {limit:g} s (trial_timeout_s)"
    if task.deadline is not None and (limit is None or task.deadline - now < limit):
        limit = max(0.0, task.deadline - now)
        reason = "stopped: the job's seconds budget (budget.seconds) ran out before it finished"
    return limit, reason


class _TimedOut(Exception):
    """A time-limited call ran past its limit (its thread is abandoned)."""


def _within(limit: float | None, call: Callable[[], Any], name: str) -> Any:
    """`call()`, or, with a limit, `call()` in a thread of its own that is abandoned when the
    limit passes (`_TimedOut`): Python cannot stop a thread, but the job goes on (on Ray the
    worker process keeps the abandoned thread until Ray retires it). Its exceptions are
    raised here."""
    if limit is None:
        return call()
    box: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            box.append((True, call()))
        except BaseException as exc:  # handed to the caller
            box.append((False, exc))

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(limit)
    if not box:
        raise _TimedOut
    finished, value = box[0]
    if not finished:
        raise value
    return value


def evaluate_one(evaluator: Evaluator, task: TrialTask) -> TrialResult:
    """Evaluate a task; any exception becomes a failed result carrying its message, and an
    evaluation past the task's time limit (`timeout_s`, `deadline`) a failed result saying so
    (see `_within`)."""
    started = time.time()
    limit, reason = _time_limit(task, started)
    try:
        return _within(limit, lambda: _evaluate(evaluator, task, started),
                       f"nas-trial-{task.number}")
    except _TimedOut:
        return _failed(task, reason, started)


def _failed(task: TrialTask, error: str, started: float) -> TrialResult:
    return TrialResult(task.number, task.key, "failed", task.attempt, error=error,
                       worker=worker_name(), started_at=started, finished_at=time.time())


def _evaluate(evaluator: Evaluator, task: TrialTask, started: float) -> TrialResult:
    result = TrialResult(task.number, task.key, "completed", task.attempt, worker=worker_name(),
                         started_at=started)
    scope = TrialScope(task)
    token = _CURRENT.set(scope)
    try:
        evaluation = (evaluator.evaluate_cached(task.arch, task.key, task.cached)
                      if task.cached else evaluator.evaluate(task.arch, task.key))
    except EvaluationError as exc:
        result.status, result.error = "failed", str(exc)
    except Exception as exc:  # a bug or a resource error in one trial must not stop the job
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
    else:
        if evaluation.pruned is not None:
            result.status, result.error = "pruned", evaluation.pruned
        result.metrics = evaluation.metrics
        result.measurements = [vars(m) for m in evaluation.measurements]
        result.params, result.flops = evaluation.params, evaluation.flops
        result.weights = evaluation.weights
    finally:
        _CURRENT.reset(token)
    result.reports = list(scope.reports)
    result.finished_at = time.time()
    return result


def evaluate_batch(spec: EvaluatorSpec, tasks: list[TrialTask]) -> list[TrialResult]:
    """Run on a worker: evaluate a batch of trials with the job's evaluator. Building the
    evaluator (loading a table or a data set, which may be the user's function) is held to
    the first trial's time limit as well: a load that hangs fails the batch, saying why."""
    started = time.time()
    limit, reason = _time_limit(tasks[0], started)
    try:
        evaluator = _within(limit, lambda: build_evaluator(spec), "nas-build-evaluator")
    except _TimedOut:
        return [_failed(t, reason, started) for t in tasks]
    except Exception as exc:
        return [_failed(t, f"cannot build evaluator: {exc}", started) for t in tasks]
    return [evaluate_one(evaluator, task) for task in tasks]
