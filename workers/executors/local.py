"""In-process executor: evaluates on `poll`, for tests, debugging and tiny jobs."""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from ..task import EvaluatorSpec, TrialResult, TrialTask, evaluate_batch
from ._base import Executor

if TYPE_CHECKING:
    from ..weight_sharing.task import SearchResult, SearchTask


class LocalExecutor(Executor):
    in_process = True

    def __init__(self, spec: EvaluatorSpec, slots: int = 1) -> None:
        super().__init__(spec, slots)
        self._queue: deque[list[TrialTask]] = deque()
        self._search: threading.Thread | None = None
        self._search_stop = threading.Event()
        self._search_out: list[SearchResult | BaseException] = []
        self._search_records: deque[dict[str, Any]] = deque()  # appended by the search

    def submit(self, batch: list[TrialTask]) -> None:
        self._queue.append(batch)

    def poll(self, timeout: float) -> list[TrialResult]:
        if not self._queue:
            return []
        return evaluate_batch(self.spec, self._queue.popleft())

    def in_flight(self) -> int:
        return len(self._queue)

    # a search runs in a thread, so the driver keeps its heartbeat while it trains
    def start_search(self, task: SearchTask) -> None:
        from ..weight_sharing.task import run_search

        self._search_stop.clear()
        self._search_out.clear()
        self._search_records.clear()

        def target() -> None:
            try:
                self._search_out.append(run_search(task, stop=self._search_stop.is_set,
                                                   progress=self._search_records.append))
            except BaseException as exc:  # handed to the driver by poll_search
                self._search_out.append(exc)

        self._search = threading.Thread(target=target, name="nas-search", daemon=True)
        self._search.start()

    def poll_search(self, timeout: float) -> SearchResult | None:
        if self._search is None:
            raise RuntimeError("no search was started")
        self._search.join(timeout)
        if self._search.is_alive():
            return None
        self._search = None
        out = self._search_out.pop()
        if isinstance(out, BaseException):
            raise out
        return out

    def search_progress(self, timeout: float = 1.0) -> list[dict[str, Any]]:
        records = []
        while self._search_records:  # deque: appends and pops are thread-safe
            records.append(self._search_records.popleft())
        return records

    def stop_search(self) -> None:
        """Asks the search to stop after its current epoch and waits for it."""
        if self._search is not None:
            self._search_stop.set()
            self._search.join()
            self._search = None

    def shutdown(self) -> None:
        self.stop_search()
        self._queue.clear()
