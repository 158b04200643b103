"""The `Executor` contract: the driver submits batches of trials and polls for results."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

from ..task import EvaluatorSpec, TrialResult, TrialTask

if TYPE_CHECKING:  # importing weight_sharing imports torch: seconds a driver need not pay
    from ..weight_sharing.task import SearchResult, SearchTask


class Executor(abc.ABC):
    """Runs batches of trials somewhere; at most `slots` batches are in flight at once."""

    #: Trials run in the driver's own process: one that kills the process (a crash in native
    #: code, `os.abort()`) kills the driver, so the driver stores each attempt before it
    #: submits a batch (else a resume would run the trial as its first attempt forever).
    in_process: bool = False

    def __init__(self, spec: EvaluatorSpec, slots: int) -> None:
        self.spec = spec
        self.slots = slots

    @abc.abstractmethod
    def submit(self, batch: list[TrialTask]) -> None:
        """Start evaluating a batch (the caller respects `free_slots`)."""

    @abc.abstractmethod
    def poll(self, timeout: float) -> list[TrialResult]:
        """Results finished so far (waiting up to `timeout` seconds for the first one)."""

    @abc.abstractmethod
    def in_flight(self) -> int:
        """Batches submitted and not yet returned by `poll`."""

    def free_slots(self) -> int:
        return self.slots - self.in_flight()

    def start_pruner(self, config: dict[str, Any],
                     reports: list[tuple[int, int, str, float]]) -> Any:
        """The job's early-stopping pruner, fed with the stored `reports` (trial, step,
        metric, value) of its finished trials; returns the handle tasks carry
        (`TrialTask.pruner`). Default: the object itself, for executors that run trials in
        this process."""
        from ..early_stopping import Pruner

        pruner = Pruner(config)
        pruner.load(reports)
        return pruner

    # ---- one long task: a weight-sharing search -------------------------------------------------
    def start_search(self, task: SearchTask) -> None:
        """Start a weight-sharing search (one at a time)."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a weight-sharing search")

    def poll_search(self, timeout: float) -> SearchResult | None:
        """The search's result once it has finished (waiting up to `timeout` seconds);
        raises the search's error if it failed."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a weight-sharing search")

    def search_progress(self, timeout: float = 1.0) -> list[dict[str, Any]]:
        """The search's progress records (`run_search`'s `progress`) since the last call,
        waiting up to `timeout` seconds for an executor that must ask a remote holder."""
        return []

    def stop_search(self) -> None:  # noqa: B027 - optional hook
        """Stop a running search (its last checkpoint stays for a resume)."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release resources; batches still in flight are abandoned."""
