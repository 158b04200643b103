"""Evaluators: what turns an architecture into metrics on a worker (benchmark, train, proxy,
analytic, function), their registry and the Evaluator contract."""

from ._base import (
    Evaluation,
    EvaluationError,
    Evaluator,
    Measurement,
    evaluator_class,
    get_evaluator,
    list_evaluators,
    register_evaluator,
)
from .analytic import AnalyticEvaluator
from .benchmark import BenchmarkEvaluator
from .function import FunctionEvaluator, TrialContext
from .proxy import ProxyEvaluator
from .train import TrainEvaluator

__all__ = [
    "AnalyticEvaluator", "BenchmarkEvaluator", "Evaluation", "EvaluationError", "Evaluator",
    "FunctionEvaluator", "TrialContext",
    "Measurement", "ProxyEvaluator", "TrainEvaluator", "evaluator_class", "get_evaluator",
    "list_evaluators", "register_evaluator",
]
