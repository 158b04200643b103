"""Evaluators: what turns an architecture into metrics on a worker (benchmark, train, proxy,
analytic, function), their registry and the Evaluator contract."""

from ._base import (
    Evaluation,
    EvaluationError,
    Evaluator,
    ExactCosts,
    Measurement,
    cost_metric_names,
    evaluator_class,
    exact_costs,
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
    "ExactCosts", "FunctionEvaluator", "TrialContext",
    "Measurement", "ProxyEvaluator", "TrainEvaluator", "cost_metric_names", "evaluator_class",
    "exact_costs", "get_evaluator",
    "list_evaluators", "register_evaluator",
]
