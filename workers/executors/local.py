"""In-process executor: evaluates on `poll`, for tests, debugging and tiny jobs."""

from __future__ import annotations

from collections import deque

from ..task import EvaluatorSpec, TrialResult, TrialTask, evaluate_batch
from ._base import Executor


class LocalExecutor(Executor):
    def __init__(self, spec: EvaluatorSpec, slots: int = 1) -> None:
        super().__init__(spec, slots)
        self._queue: deque[list[TrialTask]] = deque()

    def submit(self, batch: list[TrialTask]) -> None:
        self._queue.append(batch)

    def poll(self, timeout: float) -> list[TrialResult]:
        if not self._queue:
            return []
        return evaluate_batch(self.spec, self._queue.popleft())

    def in_flight(self) -> int:
        return len(self._queue)
