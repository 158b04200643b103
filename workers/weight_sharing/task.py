"""A weight-sharing search as one task for an executor: what the driver sends, what comes
back (plain data, so it crosses a Ray boundary)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._base import get_search


@dataclass(frozen=True)
class SearchTask:
    """Run `method` on a space with the job's strategy_args, checkpointing to a folder that
    the worker can reach (a shared filesystem on a cluster)."""

    method: str
    space: str
    space_args: dict[str, Any]
    args: dict[str, Any]
    seed: int
    checkpoint_dir: str
    attempt: int = 1

    @property
    def workers(self) -> int:
        """Data-parallel ranks (`strategy_args.workers`): above 1 the task only coordinates
        (its ranks are Ray Train workers with their own CPUs or GPUs), so it asks for none."""
        value = self.args.get("workers", 1)
        return value if isinstance(value, int) and not isinstance(value, bool) else 1


@dataclass
class SearchResult:
    """The derived architectures (keys and archs, best first) with the search's own metrics
    per architecture, the per-epoch history and where it ran."""

    keys: list[str]
    archs: list[dict[str, Any]]
    metrics: list[dict[str, float]]
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = True
    resumed_from_epoch: int = 0
    device: str = "cpu"
    worker: str = ""
    #: Data-parallel ranks that trained, and notes for the closing record (a changed rank
    #: count on resume).
    workers: int = 1
    notes: list[str] = field(default_factory=list)


def run_search(task: SearchTask, stop: Callable[[], bool] | None = None,
               progress: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """Build the space and the search, run it (resuming from the checkpoint folder).
    `progress` receives `{"epochs": E}` first, then each epoch's history record with
    `"epochs": E` added (the driver shows the search as epoch e of E)."""
    import os
    import socket

    from search_spaces import get_space

    space = get_space(task.space, **task.space_args)
    search = get_search(task.method, space, seed=task.seed, **task.args)
    report = None
    if progress is not None:
        progress({"epochs": search.epochs})

        def report(record: dict[str, Any]) -> None:
            progress({**record, "epochs": search.epochs})

    outcome = search.run(task.checkpoint_dir, stop=stop, progress=report)
    if progress is not None and outcome.history:
        # the epoch it ended at once more: a search resumed from a checkpoint of its last
        # epoch trains nothing and would otherwise report no epoch at all
        progress({**outcome.history[-1], "epochs": search.epochs})
    return SearchResult(
        [space.key(a) for a in outcome.archs], [dict(a) for a in outcome.archs],
        [dict(m) for m in outcome.metrics], outcome.history, outcome.finished,
        outcome.resumed_from_epoch, _device(search), f"{socket.gethostname()}:{os.getpid()}",
        outcome.workers, list(outcome.notes))


def _device(search: object) -> str:
    """Where the search trained (on N ranks the driver side has no device of its own:
    that of the ranks' kind)."""
    device = getattr(search, "device", None)
    return str(device) if device is not None else getattr(search, "device_name", "cpu")
