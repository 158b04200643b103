"""`check_evaluator` on every registered evaluator (one test id per check), and on broken
evaluators, which it must catch."""

from __future__ import annotations

import random
import threading

import pytest

from search_spaces import SearchSpace
from workers.evaluators import Evaluation, Evaluator, list_evaluators
from workers.evaluators.checks import CHECKS, check_evaluator

DIGITS_SPACE = {"channels": 4, "cells_per_stage": 1, "input_channels": 1, "input_size": 8}

#: evaluator -> (space_args, evaluator_args, bad_args): tiny settings (2 cores)
CASES = {
    "analytic": ({}, {}, {}),
    "benchmark": ({}, {"table": "nb201-cifar10"}, {"delay_s": -1}),
    "train": (DIGITS_SPACE, {"dataset": {"kind": "digits", "limit": 64}, "epochs": 1,
                             "batch_size": 32, "measure_latency": False,
                             "save_weights": False, "bn_recalibration": 0},
              {"latency_repeats": 1, "device": "tpu"}),
    "proxy": (DIGITS_SPACE, {"proxies": ["params", "synflow", "jacov"], "batch_size": 4},
              {"proxies": ["no_such_proxy"]}),
    "function": ({}, {"function": "tests.user_functions:evaluate", "epochs": 2},
                 {"function": "no_such_module_xyz:f", "device": "gpu"}),
}


def test_every_registered_evaluator_has_a_case():
    assert sorted(CASES) == list_evaluators()


@pytest.mark.integration
@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_registered_evaluator_passes(name, check):
    space_args, args, bad_args = CASES[name]
    check_evaluator(name, "nb201", space_args, args, bad_args=bad_args, checks=(check,))


# ---- broken evaluators ---------------------------------------------------------------------
class _Base(Evaluator):
    name = "broken"

    def __init__(self, space: SearchSpace, scale: float = 1.0) -> None:
        super().__init__(space)
        if not isinstance(scale, int | float) or scale <= 0:
            raise ValueError(f"evaluator_args.scale must be positive, got {scale!r}")
        self.scale = scale

    def metric_names(self) -> set[str]:
        return {"acc"}

    def evaluate(self, arch, key) -> Evaluation:  # noqa: ANN001
        return Evaluation({"acc": self.scale * len(key)})


class _NaN(_Base):
    def evaluate(self, arch, key) -> Evaluation:  # noqa: ANN001
        return Evaluation({"acc": float("nan")})


class _Undeclared(_Base):
    def evaluate(self, arch, key) -> Evaluation:  # noqa: ANN001
        return Evaluation({"acc": 1.0, "surprise": 2.0})


class _Random(_Base):
    def evaluate(self, arch, key) -> Evaluation:  # noqa: ANN001
        return Evaluation({"acc": random.random()})


class _Lenient(_Base):
    def __init__(self, space: SearchSpace, scale: float = 1.0, **ignored) -> None:  # noqa: ANN003
        Evaluator.__init__(self, space)
        self.scale = 1.0


class _Unpicklable(_Base):
    def evaluate(self, arch, key) -> Evaluation:  # noqa: ANN001
        return Evaluation({"acc": 1.0}, params=threading.Lock())  # type: ignore[arg-type]


def test_a_correct_evaluator_passes_every_check():
    check_evaluator(_Base, bad_args={"scale": -1})


@pytest.mark.parametrize("cls, check", [
    (_NaN, "returns finite metrics"),
    (_Undeclared, "metric names cover reports"),
    (_Random, "same seed same metrics"),
    (_Lenient, "bad args raise valueerror"),
    (_Unpicklable, "results pickle"),
])
def test_the_suite_catches_a_broken_evaluator(cls, check):
    with pytest.raises(AssertionError, match=f"evaluator 'broken' fails check '{check}'"):
        check_evaluator(cls, bad_args={"scale": -1})
