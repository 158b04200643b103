"""What runs on a Ray worker: evaluators, latency measurement, executors.

Never imports the storage layer: workers return results; the driver stores them.
"""

from .task import EvaluatorSpec, TrialResult, TrialTask, evaluate_batch

__all__ = ["EvaluatorSpec", "TrialResult", "TrialTask", "evaluate_batch"]
