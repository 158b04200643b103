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
from .benchmark import BenchmarkEvaluator
from .train import TrainEvaluator

__all__ = [
    "BenchmarkEvaluator", "Evaluation", "EvaluationError", "Evaluator", "Measurement",
    "TrainEvaluator", "evaluator_class", "get_evaluator", "list_evaluators", "register_evaluator",
]
