"""What the dashboard shows, as plain JSON-ready data: one function per page or panel.

Every figure and list comes from the code path the CLI uses (`nas.results`, the storage
queries), so the page and `nas status/best/trials` always agree. No HTTP here."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from .. import results
from ..errors import NasError
from ..storage import Storage, device_measurements, get_trial
from ..storage.schema import jobs

FINISHED = ("completed", "failed", "cancelled")


def clean(value: Any) -> Any:
    """`value` with datetimes as ISO text and non-finite floats as None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- jobs --------------------------------------------------------------------------------
def _leases(storage: Storage) -> dict[int, dict[str, Any]]:
    """Every job's lease (owner, expiry), in one query."""
    query = select(jobs.c.id, jobs.c.lease_owner, jobs.c.lease_expires_at, jobs.c.elapsed_s,
                   jobs.c.cancel_requested)
    from ..storage import as_utc

    with storage.read() as conn:
        return {r.id: {"lease_owner": r.lease_owner,
                       "lease_expires_at": as_utc(r.lease_expires_at),
                       "elapsed_s": r.elapsed_s, "cancel_requested": r.cancel_requested}
                for r in conn.execute(query)}


def _runner(owner: str | None, expires: datetime | None,
            servers: dict[str, str]) -> str | None:
    """`serve NAME` or `driver` while a live process (the job's lease `owner`, until
    `expires`) runs the job, else None."""
    if not results.driver_alive(owner, expires):
        return None
    name = servers.get(owner)
    return f"serve {name}" if name else "driver"


def _server_names(storage: Storage) -> dict[str, str]:
    return {s.owner: s.name for s in storage.servers.all() if s.alive}


def _best_score(storage: Storage, job_id: int, spec: dict[str, Any]) -> dict[str, Any] | None:
    from ..storage import best_trials

    rows = best_trials(storage, job_id, top=1)
    if not rows:
        return None
    best = results.trial_json(rows[0], spec)
    metric = spec["objectives"][0]["metric"]
    return {"trial": best["trial"], "metric": metric, "value": best["objectives"].get(metric),
            "key": best["key"]}


def jobs_list(storage: Storage) -> list[dict[str, Any]]:
    """The jobs page: every job with its status, progress, best, runner and failures."""
    leases = _leases(storage)
    servers = _server_names(storage)
    rows = []
    for job in storage.jobs.all():
        spec = job.spec
        lease = leases.get(job.id, {})
        counts = results.trial_counts(job.trials)
        rows.append({
            "id": job.id, "name": job.name, "status": job.status,
            "space": spec["space"], "strategy": spec["strategy"],
            "budget": spec.get("budget", {}), "trials": counts,
            "progress": progress(storage, job.id, spec, counts),
            "best": _best_score(storage, job.id, spec),
            "runner": _runner(lease["lease_owner"], lease["lease_expires_at"], servers)
            if lease else None,
            "created_at": job.created_at,
        })
    return clean(rows)


# ---- one job -------------------------------------------------------------------------------
def progress(storage: Storage, job_id: int, spec: dict[str, Any],
             counts: dict[str, int]) -> list[dict[str, Any]]:
    """Progress per phase (proxy pool, supernet training, trials) as the driver stored it;
    a job no driver has written progress for yet shows its trials against the budget."""
    from ..storage import job_progress

    phases = [p.as_dict() for p in job_progress(storage, job_id)]
    if phases:
        return phases
    done = sum(counts.get(s, 0) for s in ("completed", "failed", "pruned"))
    total = spec.get("budget", {}).get("trials")
    fraction = min(1.0, done / total) if total else None
    return [{"phase": "trials", "done": done, "total": total, "fraction": fraction,
             "detail": {}, "eta_s": None}]


def job_summary(storage: Storage, job_id: int, allow_actions: bool) -> dict[str, Any]:
    """The job page's live part: `nas status --json` plus progress, runner, failures."""
    data = results.status(storage, job_id)
    job = storage.jobs.get(job_id)
    data["progress"] = progress(storage, job_id, job.spec, data["trials"])
    data["runner"] = _runner(job.lease_owner, job.lease_expires_at, _server_names(storage))
    data["failures"] = [{"error": line, "count": n}
                        for line, n in storage.trials.common_errors(job_id, limit=10)]
    data["cancel_requested"] = bool(job.cancel_requested)
    data["objectives"] = job.spec["objectives"]
    data["constraints"] = job.spec.get("constraints", [])
    data["actions"] = {
        "cancel": allow_actions and job.status not in FINISHED,
        "resume": allow_actions and job.status in ("paused", "failed", "cancelled")
        or (allow_actions and job.status == "running" and not data["driver_alive"]),
    }
    return clean(data)


CHARTS = ("history", "importance", "parallel")


def job_chart(storage: Storage, job_id: int, kind: str) -> str:
    """One of the job page's charts as a Plotly figure in JSON text (plotly's own encoder):
    `history` (best so far and every trial), `importance` (which decisions matter),
    `parallel` (the decisions of every trial). A chart that cannot be drawn yet is
    {"message": why}."""
    import json

    from .. import charts, insights

    if kind not in CHARTS:
        raise NasError(f"chart must be one of {', '.join(CHARTS)}, got {kind!r}")
    data = {"history": insights.history, "importance": insights.importance,
            "parallel": insights.parallel}[kind]
    draw = {"history": charts.history_figure, "importance": charts.importance_figure,
            "parallel": charts.parallel_figure}[kind]
    try:
        return draw(data(storage, job_id)).to_json()
    except NasError as exc:  # e.g. too few trials for importances yet
        if str(exc).startswith("no job "):
            raise
        return json.dumps({"message": str(exc)})
    except Exception as exc:  # the space's own code (a plugin missing here, a bug in it)
        # must not take the page down: the chart says why it is not drawn
        return json.dumps({"message": f"{kind} cannot be drawn: {type(exc).__name__}: {exc}"})


def finished_signature(storage: Storage, job_id: int) -> tuple[Any, ...]:
    """What the charts depend on: the job's trial counts by state (finished trials never
    change), so a chart is computed again only when a trial finished."""
    return tuple(sorted(storage.trials.counts(results.check_job_id(job_id)).items()))


def pareto_panel(storage: Storage, job_id: int, device: str | None,
                 max_latency_ms: float | None) -> tuple[dict[str, Any], str]:
    """The Pareto front on `device` with the budget drawn (a Plotly figure in JSON text),
    and the best list under the budget: `nas best --device D --max-latency-ms X --json`'s
    `results`, from the same function."""
    from .. import charts, insights

    data = insights.pareto_points(storage, job_id, device, max_latency_ms)
    latencies = [p["latency_ms"] for p in data["points"]]
    panel = clean({
        "device": data["device"], "max_latency_ms": max_latency_ms,
        "range": [min(latencies), max(latencies)] if latencies else None,
        "best": data["best"], "unknown_latency": data["unknown_latency"],
    })
    return panel, charts.pareto_figure(data).to_json()


def best_under_budget(storage: Storage, job_id: int, device: str | None,
                      max_latency_ms: float | None, top: int = 5) -> dict[str, Any]:
    """Exactly `nas best --json` (the same function)."""
    return clean(results.best(storage, job_id, top=top, device=device,
                              max_latency_ms=max_latency_ms))


def job_devices(storage: Storage, job_id: int, metric: str = "latency_ms") -> list[str]:
    """The devices some trial of the job has a `metric` value on (`nas.insights.job_devices`'
    answer), found by seeking the `(job, device, ...)` index once per device instead of
    reading every value of the job (a DISTINCT over 10^5 trials x devices)."""
    from sqlalchemy import func

    from ..storage.schema import trial_device_values as tdv

    found: list[str] = []
    last: str | None = None
    with storage.read() as conn:
        while True:
            following = select(func.min(tdv.c.device)).where(tdv.c.job_id == job_id)
            if last is not None:
                following = following.where(tdv.c.device > last)
            last = conn.execute(following).scalar()
            if last is None:
                return found
            if conn.execute(select(select(tdv.c.trial_id).where(
                    tdv.c.job_id == job_id, tdv.c.device == last,
                    tdv.c.metric == metric).exists())).scalar():
                found.append(last)


def default_device(spec: dict[str, Any], devices: list[str]) -> str | None:
    """The device of the job's latency objective or constraint, else the first with values."""
    from .. import insights

    found = insights.default_device(spec)
    return found if found in devices else (devices[0] if devices else found)


# ---- the trials table ----------------------------------------------------------------------
def trials_table(storage: Storage, job_id: int, *, status: str | None, sort: str,
                 descending: bool | None, limit: int, offset: int) -> dict[str, Any]:
    """One page of the job's trials, filtered, sorted and paginated by the database."""
    from ..storage import trials_page

    spec = storage.jobs.get(results.check_job_id(job_id)).spec
    page = trials_page(storage, job_id, status=status, sort=sort, descending=descending,
                       limit=limit, offset=offset)
    metrics = [o["metric"] for o in spec["objectives"]]
    return clean({"rows": [_table_row(r, metrics) for r in page.rows], "total": page.total,
                  "limit": limit, "offset": offset, "sort": page.sort,
                  "descending": page.descending, "metrics": metrics})


def _table_row(row: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    objectives = row.get("objectives") or {}
    error = (row.get("error") or "").strip().partition("\n")[0] or None
    return {"trial": row["trial"], "status": row["status"], "score": row.get("score"),
            "values": [objectives.get(m) for m in metrics], "key": row.get("key"),
            "feasible": row.get("feasible"), "attempt": row.get("attempt"),
            "duration_s": row.get("duration_s"), "worker": row.get("worker"), "error": error}


def failed_trials(storage: Storage, job_id: int, limit: int = 10) -> list[dict[str, Any]]:
    """The job's latest failed trials with their full errors."""
    from ..storage import trials_page

    page = trials_page(storage, job_id, status="failed", sort="number", descending=True,
                       limit=limit, offset=0)
    return clean([{"trial": r["trial"], "key": r.get("key"), "attempt": r.get("attempt"),
                   "worker": r.get("worker"), "error": r.get("error")} for r in page.rows])


# ---- one trial -----------------------------------------------------------------------------
def trial_detail(storage: Storage, job_id: int, number: int) -> dict[str, Any]:
    """A trial's metrics, device measurements with their sources, and its architecture."""
    job = storage.jobs.get(results.check_job_id(job_id))
    if isinstance(number, bool) or not 1 <= number <= results.MAX_ID:
        raise NasError(f"job {job_id} has no trial {number}")
    spec = job.spec
    row = get_trial(storage, job_id, number)
    data = results.trial_json(row, spec)
    data.update(status=row["status"], error=row["error"], attempt=row["attempt"],
                worker=row["worker"], job=job_id, job_name=job.name, space=spec["space"],
                space_args=spec.get("space_args", {}))
    data["measurements"] = device_measurements(storage, [row["key"]], spec["space"]).get(
        row["key"], [])
    return clean(data)


def spec_json(storage: Storage, job_id: int, number: int) -> dict[str, Any]:
    """The trial's JSON spec, as `nas export --format json` writes it (minus the path)."""
    job = storage.jobs.get(results.check_job_id(job_id))
    spec = job.spec
    row = get_trial(storage, job_id, number)
    return clean({
        "job": job_id, "trial": number, "space": spec["space"],
        "space_args": spec.get("space_args", {}), "key": row["key"], "arch": row["arch"],
        "metrics": row["metrics"], "params": row["params"], "flops": row["flops"],
        "measurements": device_measurements(storage, [row["key"]], spec["space"]).get(
            row["key"], []),
        "format": "json",
    })


def export_onnx(storage: Storage, job_id: int, number: int, path: Path) -> None:
    """Write the trial's model as ONNX to `path`, as `nas export --format onnx` builds it
    (trained weights where they were kept, else the seeded initialisation), without
    recording an artifact: the file is a download, deleted once sent."""
    from search_spaces import get_space

    from ..export import _export_model, choose_trial, split_weights, write_atomically

    spec = storage.jobs.get(results.check_job_id(job_id)).spec
    trial = choose_trial(storage, job_id, number)
    space = get_space(spec["space"], **spec.get("space_args", {}))
    state, normalisation = split_weights(storage.trials.weights(job_id, number))
    try:
        write_atomically(path, lambda tmp: _export_model(
            space, trial["arch"], "onnx", tmp, seed=int(spec.get("seed", 0)), state=state,
            normalisation=normalisation), option="onnx")
    except NasError:
        raise
    except Exception as exc:  # a space whose model cannot be exported: say why
        raise NasError(f"space {spec['space']!r} cannot export trial {number} as ONNX: "
                       f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                       ) from None
