"""Progress of a job's phases: the driver's writer, and the text every view shows.

The driver writes each phase (`pool`, `supernet`, `trials`) to the database through a
`ProgressWriter`: throttled (a phase is written at most once every `every_s` seconds, its
last value always, on `flush`), and never in the way of the search: a database error is
logged and the search goes on (its own writes retry; progress is only for showing).
`phase_text` and `eta_text` say a phase in words for the CLI bar, `nas status` and the
dashboard: "scoring pool 812/1000", "supernet epoch 3/10 loss 1.23 acc 0.61",
"trials 40/100 best 0.93".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from .storage import set_progress

log = logging.getLogger(__name__)

#: Names of a supernet epoch's loss and accuracy in its history record, by preference
#: (the methods name them differently: DARTS `train_loss`/`val_acc`, one-shot `loss`/...).
LOSS_KEYS = ("loss", "train_loss", "val_loss")
ACCURACY_KEYS = ("val_acc", "supernet_val_acc", "val_acc_largest", "train_acc")

#: Told of each phase update as it happens: (phase, done, total or None, detail).
PhaseListener = Callable[[str, int, "int | None", dict[str, Any]], None]


class ProgressWriter:
    """Writes one job's phases for one driver session. The session's first write of a
    phase restarts that phase's clock (`set_progress(restart=True)`), so its ETA counts
    this session's rate. `listener` (the CLI's bar) is told of every update, unthrottled."""

    def __init__(self, storage: Any, job_id: int, every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 listener: PhaseListener | None = None) -> None:
        self.storage = storage
        self.job_id = job_id
        self.every_s = every_s
        self.clock = clock
        self._written_at: dict[str, float] = {}  # phase -> when this session last wrote it
        self._pending: dict[str, tuple[int, int | None, dict[str, Any] | None]] = {}
        self._failed = False
        self.listener = listener

    def update(self, phase: str, done: int, total: int | None,
               detail: dict[str, Any] | None = None, *, final: bool = False) -> None:
        """Record a phase's progress: written now when `final`, when it is complete, on
        the phase's first update or once `every_s` passed since its last write; else kept
        for the next write or `flush`."""
        self._pending[phase] = (done, total, detail)
        if self.listener is not None:
            self.listener(phase, done, total, dict(detail or {}))
        last = self._written_at.get(phase)
        if final or last is None or (total is not None and done >= total) or \
                self.clock() - last >= self.every_s:
            self._write(phase)

    def flush(self) -> None:
        """Write every phase's last value not written yet (a session's end)."""
        for phase in list(self._pending):
            self._write(phase)

    def _write(self, phase: str) -> None:
        done, total, detail = self._pending.pop(phase)
        try:
            set_progress(self.storage, self.job_id, phase, done, total, detail,
                         restart=phase not in self._written_at)
        except Exception as exc:  # noqa: BLE001 - showing progress never fails a search
            level = logging.DEBUG if self._failed else logging.WARNING
            self._failed = True
            log.log(level, "job %s: progress of %s not stored (%s: %s)", self.job_id, phase,
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return
        self._written_at[phase] = self.clock()


def epoch_detail(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a supernet epoch's history record (its loss, accuracy, seconds...)."""
    return {k: float(v) for k, v in record.items()
            if k not in ("epoch", "epochs") and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(float(v))}


def _first(detail: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if isinstance(detail.get(key), (int, float)):
            return float(detail[key])
    return None


def _of(done: int, total: int | None) -> str:
    return f"{done}/{total}" if total is not None else str(done)


def phase_text(phase: str, done: int, total: int | None, detail: dict[str, Any]) -> str:
    """A phase in a few words: "scoring pool 812/1000",
    "supernet epoch 3/10 loss 1.23 acc 0.61", "trials 40/100 best 0.93"."""
    if phase == "pool":
        return f"scoring pool {_of(done, total)}"
    if phase == "supernet":
        text = f"supernet epoch {_of(done, total)}"
        loss, accuracy = _first(detail, LOSS_KEYS), _first(detail, ACCURACY_KEYS)
        if loss is not None:
            text += f" loss {loss:.3g}"
        if accuracy is not None:
            text += f" acc {accuracy:.3g}"
        return text
    if phase == "trials":
        best = detail.get("best")
        return f"trials {_of(done, total)}" + \
            (f" best {best:.4g}" if isinstance(best, (int, float)) else "")
    return f"{phase} {_of(done, total)}"


def eta_text(seconds: float | None) -> str:
    """"ETA 3m20s"; "" when unknown."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"ETA {hours}h{minutes:02d}m"
    return f"ETA {minutes}m{secs:02d}s" if minutes else f"ETA {secs}s"
