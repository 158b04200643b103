"""What a job found, as plain data: the one code path behind `nas status/best/pareto` (their
`--json` objects) and the Python handle `nas.Job`. No printing here, no heavy imports."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from .errors import NasError
from .storage import Storage, owner_is_dead_here

MAX_ID = 2**31 - 1  # job ids and trial numbers are 32-bit integer columns
TRIAL_STATES = ("queued", "running", "completed", "failed", "pruned")
FAILURE_REASONS = 5  # the most common first lines of failed trials' errors in `status`


def check_job_id(job: int) -> int:
    if isinstance(job, bool) or not isinstance(job, int) or not 1 <= job <= MAX_ID:
        raise NasError(f"JOB must be a positive job id, got {job!r}")
    return job


def trial_counts(counts: dict[str, int]) -> dict[str, int]:
    """Every trial state, zeros included (`status --json`, `list --json`)."""
    return {s: counts.get(s, 0) for s in TRIAL_STATES}


def trial_json(row: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A stored trial as the stable JSON object of `best --json` and `pareto --json`."""
    data = {
        "trial": row["number"], "key": row["key"], "arch": row["arch"],
        "objectives": {o["metric"]: v for o, v in zip(spec["objectives"],
                                                      row["objectives"] or [], strict=False)},
        "score": row["score"], "feasible": row["feasible"], "metrics": row["metrics"],
        "params": row["params"], "flops": row["flops"],
    }
    if "device_value" in row:
        data["device_value"] = row["device_value"]
        data["device_source"] = row["device_source"]
    return data


def driver_alive(owner: str | None, expires: datetime | None) -> bool:
    """A job's lease (its owner, its expiry) is live and its owner is not a dead process of
    this host."""
    from .storage import utcnow

    if owner is None or expires is None or expires < utcnow():
        return False
    return not owner_is_dead_here(owner)


def status(storage: Storage, job_id: int) -> dict[str, Any]:
    """The `status --json` object."""
    from .storage import best_trials, job_progress

    job = storage.jobs.get(check_job_id(job_id))
    spec = job.spec
    best = best_trials(storage, job_id, top=1)
    return {
        "id": job.id, "name": job.name, "status": job.status,
        "space": spec["space"], "strategy": spec["strategy"], "budget": spec["budget"],
        "trials": trial_counts(storage.trials.counts(job_id)),
        "best": trial_json(best[0], spec) if best else None,
        "elapsed_s": round(job.elapsed_s or 0.0, 3),
        "lease_owner": job.lease_owner, "lease_expires_at": job.lease_expires_at,
        "driver_alive": driver_alive(job.lease_owner, job.lease_expires_at),
        "created_at": job.created_at, "updated_at": job.updated_at,
        "note": job.note, "error": job.error,
        "progress": [p.as_dict() for p in job_progress(storage, job_id)],
        "failures": [{"error": line, "count": count} for line, count
                     in storage.trials.common_errors(job_id, limit=FAILURE_REASONS)],
        "best_notes": best_notes(storage, job_id, spec, best[0]) if best else [],
    }


def best_notes(storage: Storage, job_id: int, spec: dict[str, Any],
               best: dict[str, Any]) -> list[str]:
    """What to know about the best trial before trusting it: it violates a constraint, or
    its feasibility or a device value the job's objectives or constraints name is unknown."""
    from .storage import unknown_measurement_count
    from .storage._trials_table import measured_device_metrics

    number, notes = best["number"], []
    if best["feasible"] is False:
        notes.append(f"best trial {number} is infeasible: it violates a constraint of the job")
    elif best["feasible"] is None and spec.get("constraints"):
        notes.append(f"best trial {number}: a constrained value is unknown, so whether it is "
                     "feasible is unknown")
    named = [(c["device"], c["metric"]) for c in (*spec["objectives"], *spec.get("constraints", []))
             if c.get("device")]
    known = measured_device_metrics(storage, job_id, number)
    for device, metric in dict.fromkeys(named):
        if (device, metric) not in known:
            others = unknown_measurement_count(storage, job_id, device, metric)
            notes.append(f"best trial {number} has no {metric} value on {device} (unknown; "
                         f"completed trials without one: {others})")
    return notes


def trials_table(storage: Storage, job_id: int, *, status: str | None = None,
                 sort: str = "score", descending: bool | None = None, limit: int = 20,
                 offset: int = 0) -> dict[str, Any]:
    """The `trials --json` object: {job, objectives (the metric names), status, sort,
    descending, offset, limit, total, rows}; `rows` as `trial_json` objects plus status,
    attempt, worker, started_at, finished_at, duration_s and error (see
    `nas.storage.trials_page`)."""
    from .storage import trials_page

    page = trials_page(storage, check_job_id(job_id), status=status, sort=sort,
                       descending=descending, limit=limit, offset=offset)
    spec = storage.jobs.get(job_id).spec
    return {"job": job_id, "objectives": [o["metric"] for o in spec["objectives"]],
            "status": status, "sort": page.sort, "descending": page.descending,
            "offset": offset, "limit": limit, "total": page.total, "rows": page.rows}


def check_device_options(device: str | None, max_latency_ms: float | None) -> None:
    if max_latency_ms is not None and device is None:
        raise NasError("--max-latency-ms needs --device")
    if max_latency_ms is not None and not (math.isfinite(max_latency_ms) and max_latency_ms > 0):
        raise NasError(f"--max-latency-ms must be a positive number, got {max_latency_ms}")


def best(storage: Storage, job_id: int, top: int = 5, device: str | None = None,
         max_latency_ms: float | None = None) -> dict[str, Any]:
    """The `best --json` object: {job, device, max_latency_ms, unknown_latency, results}."""
    from .storage import best_trials, unknown_measurement_count
    from .storage._queries import check_job_device

    check_device_options(device, max_latency_ms)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise NasError(f"--top must be at least 1, got {top!r}")
    spec = storage.jobs.get(check_job_id(job_id)).spec
    if device is not None:
        check_job_device(storage, job_id, device)
    rows = best_trials(storage, job_id, top=min(top, MAX_ID), device=device,
                       max_value=max_latency_ms)
    unknown = unknown_measurement_count(storage, job_id, device) if device else 0
    return {"job": job_id, "device": device, "max_latency_ms": max_latency_ms,
            "unknown_latency": unknown, "results": [trial_json(r, spec) for r in rows]}


def pareto(storage: Storage, job_id: int, device: str) -> dict[str, Any]:
    """The `pareto --json` object {job, device, points, front}, plus `rows`: every trial with
    a value on the device (for a plot; not part of the JSON)."""
    from .storage import pareto_front, trials_with_device_value
    from .storage._queries import check_job_device

    spec = storage.jobs.get(check_job_id(job_id)).spec
    check_job_device(storage, job_id, device)
    rows = trials_with_device_value(storage, job_id, device)
    if not rows:
        raise NasError(f"job {job_id} has no completed trial with a latency on device {device!r}")
    front = pareto_front(rows)
    return {"job": job_id, "device": device, "points": len(rows),
            "front": [trial_json(r, spec) for r in front], "rows": rows, "front_rows": front}


def trials(storage: Storage, job_id: int, *, status: str | None = None, sort: str = "number",
           descending: bool | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Every trial of a job (or those with `status`, in the order of `sort`, the first
    `limit`: see `nas.storage.trials_page`), one flat record each: trial, status, attempt,
    key, arch, score, feasible, then one entry per objective and per reported metric (a
    metric that is also an objective appears once)."""
    from .storage import trials_page

    spec = storage.jobs.get(check_job_id(job_id)).spec
    metrics = [o["metric"] for o in spec["objectives"]]
    page = trials_page(storage, job_id, status=status, sort=sort, descending=descending,
                       limit=MAX_ID if limit is None else limit)
    records = []
    for row in page.rows:
        record = {k: row[k] for k in ("trial", "status", "attempt", "key", "arch", "score",
                                      "feasible")}
        record.update((m, row["objectives"].get(m)) for m in metrics)
        for name, value in (row["metrics"] or {}).items():
            record.setdefault(name, value)
        records.append(record)
    return records
