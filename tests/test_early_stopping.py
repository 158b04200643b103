"""Early stopping (`early_stopping: {rule: median|asha, ...}`): the rules, and jobs that
store `pruned` trials and run fewer steps than the same job without it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from nas import api
from nas.errors import SpecError
from nas.spec import parse_spec
from nas.storage import Storage
from nas.storage.schema import trials
from tests.test_function_evaluator import function_spec
from workers.early_stopping import EarlyStopping, Pruner

EPOCHS = 9


@pytest.fixture(autouse=True)
def _artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))


# ---- the rules ------------------------------------------------------------------------------
def test_median_rule_stops_a_trial_below_the_median_of_the_others_at_that_step():
    pruner = Pruner(EarlyStopping("median", "acc", "max", grace_steps=2, min_trials=3))
    for trial, values in enumerate([[1, 5, 9], [1, 4, 8], [1, 6, 7]], start=1):
        assert not any(pruner.report(trial, step, v) for step, v in enumerate(values, 1))
    assert not pruner.report(4, 1, 0.0)  # within the grace steps
    assert not pruner.report(4, 2, 5.0)  # median of 5, 4, 6 is 5: not worse
    assert pruner.report(4, 3, 3.0)  # its best so far, 5, is below median(9, 8, 7) = 8
    assert not pruner.report(5, 3, 8.0)  # at the median: goes on
    low = Pruner(EarlyStopping("median", "loss", "min", grace_steps=1, min_trials=2))
    low.report(1, 1, 1.0)
    low.report(2, 1, 2.0)
    assert low.report(3, 1, 3.0) and not low.report(4, 1, 1.2)


def test_asha_promotes_the_top_third_of_each_rung():
    pruner = Pruner(EarlyStopping("asha", "acc", "max", grace_steps=1, reduction_factor=3,
                                  min_trials=3))
    assert [pruner._rung(s) for s in (0, 1, 2, 3, 8, 9)] == [None, 1, 1, 3, 3, 9]
    assert not pruner.report(1, 1, 0.5) and not pruner.report(2, 1, 0.9)
    assert pruner.report(3, 1, 0.1)  # 3 at rung 1: only the best (0.9) goes on
    assert not pruner.report(4, 1, 0.95)  # the new best
    assert pruner.report(5, 1, 0.6)  # 5 recorded: keep 1
    assert not pruner.report(2, 2, 0.1)  # rung 1 passed, rung 3 not reached
    assert not pruner.report(2, 3, 0.9)  # first at rung 3
    no_grace = Pruner(EarlyStopping("asha", "acc", "max", grace_steps=0, min_trials=1))
    assert [no_grace._rung(s) for s in (0, 1, 3)] == [None, 1, 3]


def test_stored_reports_reproduce_the_decisions():
    """What a resumed driver does: feed the stored reports, then decide on a new trial."""
    config = EarlyStopping("median", "acc", "max", grace_steps=1, min_trials=2)
    live = Pruner(config)
    stored = []
    for trial in range(1, 6):
        for step in range(1, 4):
            value = trial * 0.1 + step
            live.report(trial, step, value)
            stored.append((trial, step, "acc", value))
    resumed = Pruner(config)
    resumed.load(stored + [(1, 1, "other", 99.0)])
    assert resumed.values == live.values
    assert [resumed.report(6, s, 0.35 + s) for s in (1, 2, 3)] == \
        [live.report(6, s, 0.35 + s) for s in (1, 2, 3)]


@pytest.mark.parametrize("value, message", [
    ({"metric": "val_acc"}, "'early_stopping.rule': required"),
    ({"rule": "hyperband", "metric": "val_acc"}, "'early_stopping.rule': expected 'median' or"),
    ({"rule": "asha"}, "'early_stopping.metric': required"),
    ({"rule": "asha", "metric": "val_acc", "reduction_factor": 1},
     "'early_stopping.reduction_factor': expected an integer >= 2"),
    ({"rule": "asha", "metric": "val_acc", "patience": 3}, "'early_stopping.patience': unknown"),
    ([1], "'early_stopping': expected a mapping"),
])
def test_bad_early_stopping_is_one_line_naming_the_field(value, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(function_spec(early_stopping=value))


def test_early_stopping_needs_an_evaluator_that_reports_steps():
    spec = function_spec(evaluator="analytic", evaluator_args={},
                         objectives=[{"metric": "params", "mode": "min"}],
                         early_stopping={"rule": "median", "metric": "params"})
    with pytest.raises(SpecError, match="the analytic evaluator reports no intermediate"):
        parse_spec(spec)


# ---- jobs -----------------------------------------------------------------------------------
def _job(storage: Storage, rule: str | None, **overrides) -> int:
    spec = function_spec(budget={"trials": 24}, seed=5, **overrides)
    spec["evaluator_args"]["epochs"] = EPOCHS
    if rule is not None:
        spec["early_stopping"] = {"rule": rule, "metric": "val_acc", "mode": "max",
                                  "grace_steps": 1, "reduction_factor": 3, "min_trials": 4}
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    return job


def _steps(storage: Storage, job: int) -> int:
    return sum(1 for _, _, metric, _ in storage.trials.reports(job) if metric == "val_acc")


def _check_pruned(storage: Storage, job: int, full: int) -> int:
    with storage.read() as conn:
        rows = conn.execute(select(trials.c.number, trials.c.status, trials.c.metrics,
                                   trials.c.error, trials.c.score)
                            .where(trials.c.job_id == job)).mappings().all()
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert pruned and len(pruned) < len(rows)
    for r in pruned:  # the last reported values, no score, the reason
        assert r["score"] is None and "val_acc" in r["metrics"]
        assert r["error"].startswith("pruned at step")
    assert storage.trials.counts(job)["pruned"] == len(pruned)
    steps = _steps(storage, job)
    assert steps < full
    return steps


@pytest.mark.integration
@pytest.mark.parametrize("rule", ["median", "asha"])
def test_early_stopping_stores_pruned_trials_and_runs_fewer_steps(sqlite_url, rule):
    storage = Storage(sqlite_url)
    full = _steps(storage, _job(storage, None))
    assert full == 24 * EPOCHS
    steps = _check_pruned(storage, _job(storage, rule), full)
    print(f"{rule}: {steps} of {full} steps run")  # figures for the README


@pytest.mark.integration
def test_status_json_counts_pruned_trials(db_url):
    from typer.testing import CliRunner

    from nas.cli import app

    storage = Storage(db_url)  # SQLite and PostgreSQL: reports stored, pruned counted
    job = _job(storage, "median")
    assert len(storage.trials.reports(job)) == 2 * _steps(storage, job)
    result = CliRunner().invoke(app, ["--db", db_url, "status", str(job), "--json"])
    assert result.exit_code == 0, result.output
    import json

    counts = json.loads(result.stdout)["trials"]
    assert counts["pruned"] > 0 and sum(counts.values()) == 24


@pytest.mark.ray
def test_early_stopping_on_ray_decides_in_a_named_actor(ray_local, sqlite_url):
    storage = Storage(sqlite_url)
    full = 24 * EPOCHS
    _check_pruned(storage, _job(storage, "asha", executor="ray", parallelism=2), full)
    assert not [a for a in ray_local.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("nas-pruner-")]  # gone with the executor
