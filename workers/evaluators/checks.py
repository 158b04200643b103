"""`check_evaluator`: the conformance suite every registered evaluator must pass.

Promises checked, one check at a time (each failure an AssertionError naming the evaluator
and the check), for an evaluator built from (space, args) as a worker builds it:
- `evaluate` of a sampled architecture returns an `Evaluation` whose metrics are finite
  numbers under string names (so are its measurements' values);
- a worker task (`workers.task.evaluate_batch`, what Ray and the local executor run) over it
  completes;
- `metric_names()`, when known, covers every metric it reports (the spec layer refuses
  objectives outside it);
- two evaluators built from the same arguments give the same metrics for the same
  architecture (timings, names ending in `_s` or `_ms`, excepted): the same seed, the
  same numbers, which a resumed job relies on;
- bad arguments raise ValueError naming the field (`bad_args`: field -> a bad value), and
  an unknown argument is refused (TypeError, which the spec layer reports as an unknown
  field, or ValueError), unless the evaluator passes extra arguments on (`**args`, as
  `function` does to the user's function);
- the evaluation and its worker result survive pickling (Ray ships them between
  processes).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from search_spaces import SearchSpace, get_space
from search_spaces._conformance import check_runner

from ._base import Evaluation, Evaluator, evaluator_class

CHECKS = ("returns finite metrics", "worker task completes", "metric names cover reports",
          "same seed same metrics", "bad args raise valueerror", "results pickle")


class _Case:
    """The evaluator under test: how to build it and an architecture to evaluate."""

    def __init__(self, evaluator: str | type[Evaluator], space: str,
                 space_args: dict[str, Any], args: dict[str, Any], bad_args: dict[str, Any],
                 seed: int) -> None:
        self.cls = evaluator_class(evaluator) if isinstance(evaluator, str) else evaluator
        self.registered = evaluator if isinstance(evaluator, str) else None
        self.space_name, self.space_args = space, dict(space_args)
        self.space: SearchSpace = get_space(space, **space_args)
        self.args, self.bad_args = dict(args), dict(bad_args)
        self.arch = self.space.sample(np.random.default_rng(seed))
        self.key = self.space.key(self.arch)

    def build(self, **overrides: Any) -> Evaluator:
        return self.cls(self.space, **{**self.args, **overrides})

    def evaluate(self) -> Evaluation:
        return self.build().evaluate(self.arch, self.key)


def check_evaluator(evaluator: str | type[Evaluator], space: str = "nb201",
                    space_args: dict[str, Any] | None = None, args: dict[str, Any] | None = None,
                    *, bad_args: dict[str, Any] | None = None,
                    checks: tuple[str, ...] = CHECKS, seed: int = 0) -> None:
    """Run the `checks` (default: all of `CHECKS`, in order) on the evaluator named
    `evaluator` (or an `Evaluator` class) built with `args` (its `evaluator_args`) on the
    registered `space` with `space_args`; AssertionError names the evaluator and the failed
    check. `bad_args`: field -> a value it must refuse with ValueError naming the field."""
    case = _Case(evaluator, space, space_args or {}, args or {}, bad_args or {}, seed)
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    run = check_runner("evaluator", case.cls.name or case.cls.__name__, case)
    for label in checks:
        run(_BY_LABEL[label])


def _finite_metrics(evaluation: Any) -> None:
    assert isinstance(evaluation, Evaluation), \
        f"evaluate returned a {type(evaluation).__name__}, not an Evaluation"
    assert evaluation.metrics, "evaluate returned no metric"
    for name, value in evaluation.metrics.items():
        assert isinstance(name, str) and name, f"metric name {name!r} is not a string"
        assert isinstance(value, int | float) and not isinstance(value, bool), \
            f"metric {name!r} is a {type(value).__name__}, not a float"
        assert math.isfinite(value), f"metric {name!r} is {value}"
    for m in evaluation.measurements:
        assert math.isfinite(float(m.value)), f"measurement {m.device}/{m.metric} is {m.value}"


def _check_returns_finite_metrics(case: _Case) -> None:
    _finite_metrics(case.evaluate())


def _check_worker_task_completes(case: _Case) -> None:
    from ..task import EvaluatorSpec, TrialTask, evaluate_batch, evaluate_one

    task = TrialTask(1, case.key, case.arch)
    if case.registered is None:  # not buildable by name: run the worker's wrapper directly
        result = evaluate_one(case.build(), task)
    else:
        spec = EvaluatorSpec(case.space_name, case.space_args, case.registered, case.args)
        (result,) = evaluate_batch(spec, [task])
    assert result.status == "completed", f"the trial {result.status}: {result.error}"


def _check_metric_names_cover_reports(case: _Case) -> None:
    evaluator = case.build()
    names = evaluator.metric_names()
    if names is None:
        return  # not known before evaluating: nothing is refused at submit
    reported = set(evaluator.evaluate(case.arch, case.key).metrics)
    missing = sorted(reported - set(names))
    assert not missing, f"reports {missing} that metric_names() {sorted(names)} leaves out"


def _timing(name: str) -> bool:
    return name.endswith(("_s", "_ms"))


def _check_same_seed_same_metrics(case: _Case) -> None:
    first, second = case.evaluate().metrics, case.evaluate().metrics
    assert set(first) == set(second), f"metric names differ: {sorted(first)} / {sorted(second)}"
    differ = {k: (first[k], second[k]) for k in first
              if not _timing(k) and first[k] != second[k]}
    assert not differ, f"two evaluations of {case.key!r} differ: {differ}"


def _check_bad_args_raise_valueerror(case: _Case) -> None:
    for field, value in case.bad_args.items():
        _refused(lambda field=field, value=value: case.build(**{field: value}), field, value)
    if not getattr(case.cls, "passes_extra_args", False):
        try:
            case.build(no_such_argument=1)
        except (TypeError, ValueError) as exc:
            assert "no_such_argument" in str(exc), \
                f"an unknown argument is refused without naming it: {exc}"
        else:
            raise AssertionError("an unknown argument 'no_such_argument' is accepted")


def _refused(build: Callable[[], Any], field: str, value: Any) -> None:
    try:
        build()
    except ValueError as exc:
        assert field in str(exc), f"{field}={value!r} is refused without naming {field!r}: {exc}"
        assert "\n" not in str(exc).strip(), f"{field}={value!r}: the error is not one line"
    else:
        raise AssertionError(f"{field}={value!r} is accepted")


def _check_results_pickle(case: _Case) -> None:
    from ..task import TrialTask, evaluate_one

    evaluation = case.evaluate()
    again = pickle.loads(pickle.dumps(evaluation))
    assert again.metrics == evaluation.metrics, "metrics change through pickle"
    result = evaluate_one(case.build(), TrialTask(1, case.key, case.arch))
    assert pickle.loads(pickle.dumps(result)).metrics == result.metrics


_BY_LABEL: dict[str, Callable[[_Case], None]] = {
    "returns finite metrics": _check_returns_finite_metrics,
    "worker task completes": _check_worker_task_completes,
    "metric names cover reports": _check_metric_names_cover_reports,
    "same seed same metrics": _check_same_seed_same_metrics,
    "bad args raise valueerror": _check_bad_args_raise_valueerror,
    "results pickle": _check_results_pickle,
}
