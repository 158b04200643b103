"""The user code a job ran: recorded when it first starts, compared when it resumes.

A job's results mean something only for the code that produced them. The job row stores a
sha256 of its user modules (`workers.user_code`: the modules its spec names that are not
installed packages) the first time a driver starts it; a resume (`nas resume`, `api.resume`,
a serve process taking it over) on a machine whose code differs is refused with one line
naming the modules, unless told to allow the change, which records the new code. A job
without user modules has no hash and is never refused.
"""

from __future__ import annotations

import os
from typing import Any

from workers.user_code import UnshippableModuleError, UserCode, find_user_code

from .errors import NasError
from .spec import spec_modules
from .storage import JobRecord, Storage

#: Set to 1 to run jobs without shipping their user code to Ray workers. Private: only for
#: the test that shows workers fail without it (tests/test_code_shipping.py).
NO_SHIPPING_ENV = "_NAS_NO_CODE_SHIPPING"


class CodeChangedError(NasError):
    """The job's user code here differs from the code it ran."""


def job_code(spec: dict[str, Any]) -> UserCode | None:
    """The user code of a stored spec as found here (None: it has none)."""
    try:
        return find_user_code(spec_modules(spec))
    except UnshippableModuleError as exc:
        if spec.get("executor", "ray") == "local":  # nothing travels: no hash either
            return None
        raise NasError(f"cannot ship the job's code to Ray workers: {exc}") from None


def shipped_code(code: UserCode | None) -> UserCode | None:
    """`code`, or None when shipping is switched off (`NO_SHIPPING_ENV`)."""
    return None if os.environ.get(NO_SHIPPING_ENV) == "1" else code


def compare_code(job: JobRecord) -> tuple[UserCode | None, str | None]:
    """The job's user code here, and a line naming the modules that differ from the code
    it recorded (None when it recorded none, or the same)."""
    code = job_code(job.spec)
    recorded = job.code
    now = code.record() if code is not None else None
    if recorded is None or (now is not None and recorded.get("sha256") == now["sha256"]):
        return code, None
    return code, _changed_line(job.id, recorded, now)


def check_code(storage: Storage, job_id: int, *, allow_change: bool = False) -> UserCode | None:
    """The job's user code here, recorded when the job has none recorded yet (its first
    start) or when it differs and `allow_change`; raises CodeChangedError, writing nothing,
    when it differs from the recorded code."""
    job = storage.jobs.get(job_id)
    code, changed = compare_code(job)
    if changed is not None and not allow_change:
        raise CodeChangedError(changed)
    if changed is not None or (job.code is None and code is not None):
        storage.jobs.set_code(job_id, code.record() if code is not None else None)
    return code


def _changed_line(job_id: int, recorded: dict[str, Any], now: dict[str, Any] | None) -> str:
    """One line naming the modules whose code differs from what job `job_id` ran."""
    before: dict[str, str] = recorded.get("modules") or {}
    after: dict[str, str] = (now or {}).get("modules") or {}
    names = []
    for module in sorted(set(before) | set(after)):
        if module not in after:
            names.append(f"{module} (not found here)")
        elif module not in before:
            names.append(f"{module} (new)")
        elif before[module] != after[module]:
            names.append(module)
    return (f"job {job_id} ran other code: module{'s' if len(names) > 1 else ''} "
            f"{', '.join(names)} changed since (sha256 {recorded.get('sha256', '?')[:12]}, "
            f"here {(now or {}).get('sha256', 'none')[:12]}); resume with "
            f"--allow-code-change (api.resume(..., allow_code_change=True)) to run it with "
            f"the code here")
