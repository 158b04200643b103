"""What a job's trials say, as plain data read from the database: the progress of the search
(`history`), which decisions matter (`importance`), the decisions of every trial
(`parallel`), the Pareto front with what a latency budget leaves (`pareto_points`) and a
summary of the job (`summary`). `nas plot`, `nas report` and the dashboard draw these; no
drawing and no printing here."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from .errors import NasError
from .storage import Storage, TrialRecord, as_utc
from .storage.schema import trial_device_values, trials

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: Fewer completed trials than this give importances that are mostly noise.
MIN_IMPORTANCE_TRIALS = 10
IMPORTANCE_METHOD = ("XGBoost (the project's GBDT predictor) fitted to the primary objective's "
                     "score on the completed trials' encodings; each decision's share of the "
                     "total split gain of its features")


def _job_spec(storage: Storage, job_id: int) -> dict[str, Any]:
    from .results import check_job_id

    return storage.jobs.get(check_job_id(job_id)).spec


def _space(spec: dict[str, Any]) -> Any:
    from search_spaces import get_space

    return get_space(spec["space"], **spec.get("space_args", {}))


def primary_objective(spec: dict[str, Any]) -> dict[str, Any]:
    """{metric, mode} of the job's first objective (the one `score` ranks by)."""
    first = spec["objectives"][0]
    return {"metric": first["metric"], "mode": first.get("mode", "max")}


# ---- history ----------------------------------------------------------------------------
def _trial_times(storage: Storage, job_id: int) -> list[dict[str, Any]]:
    query = (select(trials.c.number, trials.c.status, trials.c.score, trials.c.objectives,
                    trials.c.feasible, trials.c.started_at, trials.c.finished_at,
                    trials.c.error)
             .where(trials.c.job_id == job_id).order_by(trials.c.number))
    with storage.read() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def history(storage: Storage, job_id: int) -> dict[str, Any]:
    """Every finished trial in the order it finished (then by number): number, status,
    finished_at, elapsed_s (since the job's first trial started), score, value (the primary
    objective, in its own units), best_so_far (the best value among the completed trials
    finished so far, as `nas status` ranks them: by score). Failed and pruned trials are in
    the list with value None, so a chart can mark them."""
    spec = _job_spec(storage, job_id)
    rows = _trial_times(storage, job_id)
    starts = [as_utc(r["started_at"]) for r in rows if r["started_at"] is not None]
    origin = min(starts) if starts else None
    finished = [r for r in rows if r["status"] in ("completed", "failed", "pruned")]
    finished.sort(key=lambda r: (r["finished_at"] is None, as_utc(r["finished_at"]) or EPOCH,
                                 r["number"]))
    points, best_score, best_value = [], None, None
    for r in finished:
        value = (r["objectives"] or [None])[0] if r["status"] == "completed" else None
        if r["status"] == "completed" and r["score"] is not None and \
                (best_score is None or r["score"] > best_score):
            best_score, best_value = r["score"], value
        end = as_utc(r["finished_at"])
        points.append({
            "number": r["number"], "status": r["status"], "finished_at": end,
            "elapsed_s": (end - origin).total_seconds() if end and origin else None,
            "score": r["score"] if r["status"] == "completed" else None, "value": value,
            "feasible": r["feasible"], "best_so_far": best_value,
        })
    return {"job": job_id, "objective": primary_objective(spec), "trials": points}


# ---- decisions ---------------------------------------------------------------------------
def _literal(value: Any) -> Any:
    """PyGlove shows a string candidate quoted ("'none'"): the plain string."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def decisions(space: Any) -> list[dict[str, Any]]:
    """The space's decisions in DNA order: name (PyGlove's location, e.g. `ops[3]` or
    `stages[0].depth`; `decision i` when the template does not line up with the DNA),
    kind (`choice` or `float`) and candidates (labels; None for a float decision)."""
    counts = space.choice_counts()
    floats = space.float_decisions()
    points: list[Any] = []
    try:
        import pyglove as pg

        points = list(pg.dna_spec(space.template()).decision_points)
    except Exception:  # a plugin space whose template PyGlove cannot analyse: plain names
        points = []
    named = len(points) == len(counts)
    found = []
    for i, count in enumerate(counts):
        point = points[i] if named else None
        name = str(point.id) if point is not None else f"decision {i}"
        if i in floats:
            found.append({"name": name, "kind": "float", "candidates": None})
            continue
        labels = [_literal(v) for v in getattr(point, "literal_values", None) or []]
        if len(labels) != count:
            labels = list(range(count))
        found.append({"name": name, "kind": "choice", "candidates": labels})
    return found


def _completed(storage: Storage, job_id: int) -> list[TrialRecord]:
    return [r for r in storage.trials.load(job_id)
            if r.status == "completed" and r.score is not None]


def decision_importance(space: Any, archs: list[dict[str, Any]],
                        scores: list[float], seed: int = 0) -> list[dict[str, Any]]:
    """Each decision's importance (fractions summing to 1, highest first) for predicting
    `scores` from `archs`: the GBDT predictor's total split gain per one-hot feature, summed
    over each decision's features. Deterministic for a seed."""
    import numpy as np

    from predictors.gbdt import GBDTPredictor

    if len(archs) < MIN_IMPORTANCE_TRIALS:
        raise NasError(f"importance needs at least {MIN_IMPORTANCE_TRIALS} completed trials, "
                       f"got {len(archs)}")
    X = np.stack([space.encode(a) for a in archs]).astype(np.float32)
    y = np.asarray(scores, dtype=np.float64)
    gains = np.zeros(X.shape[1])
    if np.ptp(y) > 0:  # all scores equal: nothing to explain, every decision gets 0
        model = GBDTPredictor(seed=seed, subsample=1.0, colsample_bytree=1.0)
        model.fit(X, y)
        gains = model.feature_importance()
    found, offset = [], 0
    for decision, count in zip(decisions(space), space.choice_counts(), strict=True):
        found.append({"name": decision["name"], "gain": float(gains[offset:offset + count].sum())})
        offset += count
    total = sum(d["gain"] for d in found)
    for d in found:
        d["importance"] = d["gain"] / total if total > 0 else 0.0
    return sorted(found, key=lambda d: (-d["importance"], d["name"]))


def importance(storage: Storage, job_id: int) -> dict[str, Any]:
    """Which decisions matter for the primary objective: {job, method, trials, objective,
    decisions: [{name, importance, gain}] highest first}. NasError under
    MIN_IMPORTANCE_TRIALS completed trials."""
    spec = _job_spec(storage, job_id)
    done = _completed(storage, job_id)
    if len(done) < MIN_IMPORTANCE_TRIALS:
        raise NasError(f"job {job_id} has {len(done)} completed trials; importance needs at "
                       f"least {MIN_IMPORTANCE_TRIALS}")
    found = decision_importance(_space(spec), [r.arch for r in done],
                                [r.score for r in done], seed=spec.get("seed", 0) or 0)
    return {"job": job_id, "method": IMPORTANCE_METHOD, "trials": len(done),
            "objective": primary_objective(spec), "decisions": found}


def parallel(storage: Storage, job_id: int) -> dict[str, Any]:
    """The decisions of every completed trial with its score, for parallel coordinates:
    {job, objective, decisions (as `decisions()`), trials: [{number, values (one label or
    float per decision), score, value}]}."""
    spec = _job_spec(storage, job_id)
    space = _space(spec)
    described = decisions(space)
    rows = []
    for r in _completed(storage, job_id):
        dna = space.to_dna(r.arch)
        values = [v if d["kind"] == "float" else d["candidates"][int(v)]
                  for v, d in zip(dna, described, strict=True)]
        rows.append({"number": r.number, "values": values, "score": r.score,
                     "value": (r.objectives or [None])[0]})
    return {"job": job_id, "objective": primary_objective(spec), "decisions": described,
            "trials": rows}


# ---- devices and the Pareto front -----------------------------------------------------------
def job_devices(storage: Storage, job_id: int, metric: str = "latency_ms") -> list[str]:
    """The devices some of the job's trials have a `metric` value on, sorted."""
    tdv = trial_device_values
    query = (select(tdv.c.device).where(tdv.c.job_id == job_id, tdv.c.metric == metric)
             .distinct().order_by(tdv.c.device))
    with storage.read() as conn:
        return list(conn.execute(query).scalars())


def default_device(spec: dict[str, Any]) -> str | None:
    """The device of the job's latency objective, else of its latency constraint."""
    for item in [*spec.get("objectives", []), *spec.get("constraints", [])]:
        if item.get("device") and item.get("metric") == "latency_ms":
            return item["device"]
    return None


def pareto_points(storage: Storage, job_id: int, device: str | None,
                  max_latency_ms: float | None = None, top: int = 5) -> dict[str, Any]:
    """The primary objective against latency on a device: {job, device, objective,
    max_latency_ms, points: [{number, latency_ms, source, value, score, on_front,
    within_budget}], front: numbers on the Pareto front by latency, best: the `top` trials
    `nas best --device D --max-latency-ms X --top N --json` lists (its `results`),
    unknown_latency}. Without a device, the job's latency objective's device."""
    from . import results

    spec = _job_spec(storage, job_id)
    device = device or default_device(spec)
    if device is None:
        known = ", ".join(job_devices(storage, job_id)) or "none"
        raise NasError(f"job {job_id} has no latency objective on a device: give --device "
                       f"(devices with values: {known})")
    results.check_device_options(device, max_latency_ms)
    front_data = results.pareto(storage, job_id, device)
    best = results.best(storage, job_id, top, device, max_latency_ms)
    on_front = {r["number"] for r in front_data["front_rows"]}
    points = [{
        "number": r["number"], "latency_ms": r["device_value"], "source": r["device_source"],
        "value": (r["objectives"] or [None])[0], "score": r["score"],
        "on_front": r["number"] in on_front,
        "within_budget": max_latency_ms is None or r["device_value"] <= max_latency_ms,
    } for r in sorted(front_data["rows"], key=lambda r: r["number"])]
    return {"job": job_id, "device": device, "objective": primary_objective(spec),
            "max_latency_ms": max_latency_ms, "points": points,
            "front": [r["number"] for r in front_data["front_rows"]],
            "best": best["results"], "unknown_latency": best["unknown_latency"]}


# ---- the job as a whole --------------------------------------------------------------------
def summary(storage: Storage, job_id: int, top: int = 10) -> dict[str, Any]:
    """`nas status --json`'s object plus the spec, the `top` best trials (as `nas best`
    lists them), the failure reasons with counts and the devices with latency values."""
    from . import results

    data = results.status(storage, job_id)
    data["spec"] = storage.jobs.get(job_id).spec
    data["top"] = results.best(storage, job_id, top)["results"]
    data["failures"] = [{"error": e, "count": n}
                        for e, n in storage.trials.common_errors(job_id, limit=10)]
    data["devices"] = job_devices(storage, job_id)
    return data


def best_architecture(storage: Storage, job_id: int) -> dict[str, Any] | None:
    """The best completed trial's {number, key, arch, space, space_args}, or None."""
    from .storage import best_trials

    spec = _job_spec(storage, job_id)
    rows = best_trials(storage, job_id, top=1)
    if not rows:
        return None
    return {"number": rows[0]["number"], "key": rows[0]["key"], "arch": rows[0]["arch"],
            "space": spec["space"], "space_args": spec.get("space_args", {})}


__all__ = ["IMPORTANCE_METHOD", "MIN_IMPORTANCE_TRIALS", "best_architecture", "decision_importance",
           "decisions", "default_device", "history", "importance", "job_devices", "parallel",
           "pareto_points", "primary_objective", "summary"]
