"""The driver loop end to end on real storage, with the in-process executor."""

from __future__ import annotations

import pytest

from nas import api
from nas.storage import Storage, best_trials
from tests.conftest import nb201_spec


def _completed_keys(storage: Storage, job_id: int) -> list[str]:
    return [r.key for r in storage.trials.load(job_id) if r.status == "completed"]


def test_job_runs_to_budget_and_stores_every_trial(db_url):
    storage = Storage(db_url)
    job = api.submit(storage, nb201_spec())
    assert api.run(storage, job) == "completed"
    rows = storage.trials.load(job)
    assert [r.number for r in rows] == list(range(1, 41))
    assert all(r.status == "completed" for r in rows)
    assert len({r.key for r in rows}) == 40  # no architecture evaluated twice
    assert storage.jobs.get(job).status == "completed"
    assert storage.jobs.get(job).lease_owner is None


def test_same_seed_same_search_different_seed_different_search(sqlite_url):
    storage = Storage(sqlite_url)
    a = api.submit(storage, nb201_spec(seed=3))
    b = api.submit(storage, nb201_spec(seed=3, parallelism=1, batch_size=8))
    c = api.submit(storage, nb201_spec(seed=4))
    for job in (a, b, c):
        api.run(storage, job)
    assert _completed_keys(storage, a) == _completed_keys(storage, b)
    assert _completed_keys(storage, a) != _completed_keys(storage, c)


def test_missing_architecture_is_a_failed_trial_and_search_goes_on(sqlite_url, tmp_path):
    import csv
    import gzip
    from importlib import resources

    data = resources.files("workers").joinpath("data", "nb201-cifar10.csv.gz").read_bytes()
    rows = list(csv.DictReader(gzip.decompress(data).decode().splitlines()))
    partial = tmp_path / "half.csv"
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[::2])
    storage = Storage(sqlite_url)
    job = api.submit(storage, nb201_spec(evaluator_args={"table": str(partial)},
                                         budget={"trials": 30}))
    assert api.run(storage, job) == "completed"
    trials = storage.trials.load(job)
    failed = [t for t in trials if t.status == "failed"]
    assert len(trials) == 30 and failed and len(failed) < 30
    with storage.engine.connect() as conn:
        from sqlalchemy import select

        from nas.storage.schema import trials as trials_table

        errors = conn.execute(select(trials_table.c.error).where(
            trials_table.c.status == "failed")).scalars().all()
    assert all("is not in table" in e for e in errors)


def test_no_budget_is_spent_on_known_violations_and_best_respects_budget(db_url):
    """HW-NAS-Bench gives every cell's Pixel 3 latency before evaluation: the strategy skips
    cells over the budget (only cells with no latency in the table can still be over)."""
    storage = Storage(db_url)
    spec = nb201_spec(constraints=[{"metric": "latency_ms", "device": "pixel3", "max": 16.0}],
                      budget={"trials": 60})
    job = api.submit(storage, spec)
    api.run(storage, job)
    rows = best_trials(storage, job, top=100, device="pixel3")
    assert len(rows) == 60 and all(r["device_value"] is None or r["device_value"] <= 16.0
                                   for r in rows)
    assert all(r["feasible"] is True for r in rows if r["device_value"] is not None)
    under = best_trials(storage, job, top=100, device="pixel3", max_value=16.0)
    scores = [r["score"] for r in under]
    assert under and scores == sorted(scores, reverse=True)
    # without the constraint the same seed does spend trials over 16 ms
    free = api.submit(storage, nb201_spec(budget={"trials": 60}))
    api.run(storage, free)
    over = [r for r in best_trials(storage, free, top=100, device="pixel3")
            if r["device_value"] is not None and r["device_value"] > 16.0]
    assert len(over) > 10


def test_violations_only_known_after_evaluation_are_flagged(db_url):
    """A constraint on a metric the table reports (test_acc) is unknown before evaluation:
    trials over it are stored as infeasible and the search goes on."""
    storage = Storage(db_url)
    spec = nb201_spec(constraints=[{"metric": "test_acc", "max": 90.0}], budget={"trials": 40})
    job = api.submit(storage, spec)
    api.run(storage, job)
    rows = [r for r in storage.trials.load(job) if r.status == "completed"]
    flagged = [r for r in rows if r.feasible is False]
    assert flagged and all(r.metrics["test_acc"] > 90.0 for r in flagged)
    assert all(r.metrics["test_acc"] <= 90.0 for r in rows if r.feasible is True)
    best = best_trials(storage, job, top=1, feasible_only=True)[0]
    assert best["metrics"]["test_acc"] <= 90.0


@pytest.mark.integration
def test_time_budget_stops_the_search(sqlite_url):
    storage = Storage(sqlite_url)
    spec = nb201_spec(budget={"seconds": 1.0}, evaluator_args={"delay_s": 0.05},
                      parallelism=1, batch_size=1)
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    done = storage.trials.counts(job).get("completed", 0)
    assert 5 <= done <= 40


def test_a_device_measurement_can_be_an_objective(sqlite_url):
    storage = Storage(sqlite_url)
    spec = nb201_spec(objectives=[{"metric": "valid_acc", "mode": "max"},
                                  {"metric": "latency_ms", "device": "edgegpu", "mode": "min"}],
                      budget={"trials": 30})
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    assert storage.jobs.get(job).spec["objectives"][1] == \
        {"metric": "latency_ms", "device": "edgegpu", "mode": "min"}
    from workers.tables import load_table

    latency = load_table("hw-nas-bench-cifar10").rows
    for row in storage.trials.load(job):
        expected = latency.get(row.key, {}).get("edgegpu_latency_ms")
        assert row.objectives == [row.metrics["valid_acc"], expected]
