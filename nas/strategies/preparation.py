"""What a strategy may ask the driver to run before its first `ask` (`Strategy.preparation`).

Two kinds, both run on the job's executor (workers, Ray in parallel) while the driver keeps
the job's lease and honours a cancel or a stop, the result handed back with
`Strategy.prepared` and then stored in a strategy snapshot, so a resumed job never prepares
twice:

- `Evaluations`: a batch of evaluations of candidate architectures with an evaluator of their
  own (e.g. the `proxy` strategy scores its pool with the `proxy` evaluator). Values stored
  under the evaluator's cache device (`Evaluator.cache_device`) are reused, and every
  measurement a worker reports is stored as it arrives, so an interrupted preparation resumes
  where it stopped and another job never computes a cached value twice.
- `LongTask`: one long, checkpointed task (a weight-sharing search training its supernet);
  a job interrupted meanwhile runs it again and it resumes from its own checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from search_spaces import Arch

if TYPE_CHECKING:  # importing weight_sharing imports torch
    from workers.weight_sharing.task import SearchTask


@dataclass(frozen=True)
class Evaluations:
    """Evaluate `candidates` (key, arch) with `evaluator` on the space built with the job's
    `space_args` updated by `space_args`.

    A candidate whose stored values (under the evaluator's cache device) hold every one of
    `metrics` is not evaluated again. `Strategy.prepared` receives `{key: values}` for every
    candidate: its stored values, updated by what its evaluation reported (the evaluator's
    metrics, then its measurements' values by metric name); one whose evaluation failed has
    only its stored values."""

    evaluator: str
    evaluator_args: dict[str, Any]
    candidates: list[tuple[str, Arch]]
    metrics: tuple[str, ...]
    space_args: dict[str, Any] = field(default_factory=dict)
    #: the job's note when it is cancelled meanwhile
    cancel_note: str = "cancelled by the user while its strategy was preparing"
    #: the job's progress phase (`job_progress`): candidates evaluated of all
    phase: str = "pool"


@dataclass(frozen=True)
class LongTask:
    """One long task for the executor (`Executor.start_search`); `Strategy.prepared`
    receives its result. `artifacts` ((kind, path) pairs) are recorded on the job once it
    has finished."""

    task: SearchTask
    artifacts: tuple[tuple[str, str], ...] = ()
    cancel_note: str = "cancelled by the user while its strategy was preparing"
    #: the job's progress phase (`job_progress`): the task's epochs done of all, from the
    #: records it reports (`run_search`'s `progress`)
    phase: str = "supernet"


#: What `Strategy.preparation` returns when it has something to run.
Preparation = Evaluations | LongTask
