"""The Python API behind the CLI: submit, run, resume, query."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .code_check import CodeChangedError, compare_code
from .driver import Driver, Progress
from .errors import NasError
from .spec import JobSpec, load_spec_file, parse_spec
from .storage import Storage, new_owner


def submit(storage: Storage, spec: JobSpec | dict[str, Any]) -> int:
    """Validate (if needed) and store a job; returns its id. Nothing is written on error."""
    if not isinstance(spec, JobSpec):
        spec = parse_spec(spec)
    return storage.jobs.create(spec.to_dict(), spec.name, spec.seed)


def submit_file(storage: Storage, path: str | Path, overrides: list[str] | None = None) -> int:
    return submit(storage, load_spec_file(path, overrides))


def run(storage: Storage, job_id: int, *, ray_address: str | None = None,
        progress: Progress | None = None, **driver_args: Any) -> str:
    """Run or resume a job in this process until its budget is spent; returns its status."""
    return Driver(storage, job_id, ray_address=ray_address, progress=progress,
                  **driver_args).run()


def reopen(storage: Storage, job_id: int, *, allow_code_change: bool = False) -> None:
    """Put an interrupted, failed or cancelled job back to `pending`, withdrawing an earlier
    cancel request; raises LeaseHeldError while a live driver runs it, NasError when it is
    completed, CodeChangedError (nothing changed) when its user code here differs from the
    code it ran, unless `allow_code_change`, which records the code here. A cancel requested
    after this call stops the job."""
    job = storage.jobs.get(job_id)
    if job.status == "completed":
        raise NasError(f"job {job_id} is already completed")
    code, changed = compare_code(job)
    if changed is not None and not allow_code_change:
        raise CodeChangedError(changed)
    probe = new_owner()
    storage.jobs.acquire_lease(job_id, probe, ttl_s=5.0)
    if changed is not None:
        storage.jobs.set_code(job_id, code.record() if code is not None else None)
    storage.jobs.reopen(job_id, probe)


def resume(storage: Storage, job_id: int, *, ray_address: str | None = None,
           progress: Progress | None = None, allow_code_change: bool = False,
           **driver_args: Any) -> str:
    """Reopen the job (see `reopen`) and run it here to the end of its budget."""
    reopen(storage, job_id, allow_code_change=allow_code_change)
    return run(storage, job_id, ray_address=ray_address, progress=progress, **driver_args)
