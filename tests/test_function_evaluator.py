"""The `function` evaluator: the user's own `evaluate(arch, ctx)`, locally and on Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from nas import api
from nas.errors import SpecError
from nas.spec import parse_spec
from nas.storage import Storage
from nas.storage.schema import trial_reports, trials
from tests.conftest import ROOT, nb201_spec
from workers.evaluators.function import trial_seed


@pytest.fixture(autouse=True)
def _artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))


def function_spec(function: str = "tests.user_functions:evaluate", **overrides) -> dict:
    spec = nb201_spec(strategy="random", strategy_args={}, evaluator="function",
                      evaluator_args={"function": function, "epochs": 4},
                      objectives=[{"metric": "val_acc", "mode": "max"}],
                      budget={"trials": 12}, parallelism=1, batch_size=1)
    spec.update(overrides)
    return spec


def _rows(storage: Storage, job: int) -> list[dict]:
    with storage.read() as conn:
        return [dict(r) for r in conn.execute(
            select(trials.c.number, trials.c.status, trials.c.metrics, trials.c.error,
                   trials.c.attempt)
            .where(trials.c.job_id == job).order_by(trials.c.number)).mappings()]


@pytest.mark.integration
def test_user_function_trains_on_digits_and_reports_every_epoch(sqlite_url):
    storage = Storage(sqlite_url)
    job = api.submit(storage, function_spec())
    assert api.run(storage, job) == "completed"
    rows = _rows(storage, job)
    assert [r["status"] for r in rows] == ["completed"] * 12
    accuracies = [r["metrics"]["val_acc"] for r in rows]
    assert max(accuracies) > 60 and len(set(accuracies)) > 3  # real training, varied archs
    reports = storage.trials.reports(job)
    assert len(reports) == 12 * 4 * 2  # 4 epochs x (val_acc, loss)
    last = {n: v for n, step, metric, v in reports if metric == "val_acc" and step == 4}
    assert last == {r["number"]: r["metrics"]["val_acc"] for r in rows}


def test_context_gives_seed_trial_args_device_and_scratch_dir(sqlite_url):
    storage = Storage(sqlite_url)
    spec = function_spec("tests.user_functions:context_of", seed=7, budget={"trials": 3},
                         objectives=[{"metric": "seed", "mode": "max"}])
    spec["evaluator_args"] = {"function": "tests.user_functions:context_of", "answer": 42}
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    for row in _rows(storage, job):
        m = row["metrics"]
        assert m["seed"] == trial_seed(7, row["number"]) and m["trial"] == row["number"]
        assert m["answer"] == 42 and m["scratch"] == 1.0 and m["gpus"] == 0.0
    assert os.path.isdir(os.path.join(os.environ["NAS_ARTIFACTS"], storage.database_id,
                                      f"job-{job}", "trials", "1"))
    assert len({trial_seed(7, n) for n in range(1000)}) == 1000


@pytest.mark.integration
def test_bad_returns_fail_the_trial_with_the_reason_and_the_search_goes_on(sqlite_url):
    storage = Storage(sqlite_url)
    job = api.submit(storage, function_spec("tests.user_functions:bad_return",
                                            budget={"trials": 8}))
    assert api.run(storage, job) == "completed"
    rows = _rows(storage, job)
    by_kind = {r["number"] % 4: r for r in rows}
    assert by_kind[0]["status"] == "completed"
    assert "returned a list, not a dict" in by_kind[1]["error"]
    assert "metric 'val_acc' is a str, not a number" in by_kind[2]["error"]
    assert "metric 'val_acc' is nan, not a finite number" in by_kind[3]["error"]
    assert sum(r["status"] == "failed" for r in rows) == 6


@pytest.mark.parametrize("function, message", [
    ("no_colon", "malformed reference 'no_colon'"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("json:no_such", "module 'json' has no attribute 'no_such'"),
    ("json:__doc__", "is a str, not callable"),
    (42, "must read 'module:function', got 42"),
])
def test_bad_function_reference_is_one_line_naming_the_field(function, message):
    with pytest.raises(SpecError) as info:
        parse_spec(function_spec(function))
    text = str(info.value)
    assert text.startswith("spec field 'evaluator_args.function'") and message in text
    assert "\n" not in text


def test_module_in_the_current_folder_is_found(tmp_path, monkeypatch):
    (tmp_path / "mymod_here.py").write_text("def evaluate(arch, ctx):\n    return {'a': 1}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    spec = parse_spec(function_spec("mymod_here:evaluate",
                                    objectives=[{"metric": "a", "mode": "max"}]))
    assert spec.evaluator_args["function"] == "mymod_here:evaluate"
    sys.modules.pop("mymod_here", None)


def _driver(url: str, job: int, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas", "--db", url, "drive", str(job)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _finished(storage: Storage, job: int) -> int:
    with storage.read() as conn:
        return conn.execute(select(func.count()).where(
            trials.c.job_id == job, trials.c.status.in_(("completed", "pruned")))).scalar_one()


@pytest.mark.slow
@pytest.mark.parametrize("early_stopping", [None, "median"])
def test_resume_after_kill_9_gives_the_trials_of_an_uninterrupted_run(sqlite_url,
                                                                       early_stopping):
    """Local executor: the driver is killed mid-job and resumed. With early stopping too:
    trials run one after the other, and the resumed driver's pruner is fed what the
    finished trials reported, so it decides as the uninterrupted run did."""
    spec = function_spec(budget={"trials": 40}, snapshot_every=5, seed=3)
    if early_stopping:
        spec["early_stopping"] = {"rule": early_stopping, "metric": "val_acc", "min_trials": 3}
    storage = Storage(sqlite_url)
    reference = api.submit(storage, spec)
    assert api.run(storage, reference) == "completed"
    job = api.submit(storage, spec)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = _driver(sqlite_url, job, env)
    deadline = time.time() + 120
    while _finished(storage, job) < 12 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the driver ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 12 <= _finished(storage, job) < 40
    result = subprocess.run([sys.executable, "-m", "nas", "--db", sqlite_url, "resume",
                             str(job), "--wait", "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)["trials"]
    assert counts["completed"] + counts["pruned"] == 40
    assert (counts["pruned"] > 0) == bool(early_stopping)

    def trials_of(j: int) -> list:
        return [(r.number, r.key, r.status, json.dumps(r.metrics, sort_keys=True))
                for r in storage.trials.load(j)]

    assert trials_of(job) == trials_of(reference)
    assert storage.trials.reports(job) == storage.trials.reports(reference)


# ---- Ray -----------------------------------------------------------------------------------
@pytest.mark.ray
def test_user_function_on_ray_gives_the_trials_of_the_local_executor(ray_local, sqlite_url):
    storage = Storage(sqlite_url)
    via_ray = api.submit(storage, function_spec(executor="ray", parallelism=2))
    local = api.submit(storage, function_spec())
    assert api.run(storage, via_ray) == "completed"
    assert api.run(storage, local) == "completed"
    ray_rows, local_rows = _rows(storage, via_ray), _rows(storage, local)
    assert [r["metrics"] for r in ray_rows] == [r["metrics"] for r in local_rows]
    with storage.read() as conn:
        workers = set(conn.execute(select(trials.c.worker).where(
            trials.c.job_id == via_ray)).scalars())
        assert conn.execute(select(func.count()).select_from(trial_reports)).scalar_one() \
            == 2 * 12 * 4 * 2
    assert all(":node=" in w for w in workers)


@pytest.mark.ray
def test_scratch_dir_survives_a_retry_of_a_crashed_worker(ray_local, sqlite_url):
    storage = Storage(sqlite_url)
    job = api.submit(storage, function_spec("tests.user_functions:crash_once", executor="ray",
                                            budget={"trials": 2}, parallelism=2))
    assert api.run(storage, job) == "completed"
    for row in _rows(storage, job):
        assert row["status"] == "completed" and row["attempt"] == 2
        assert row["metrics"]["first_attempt"] == 1.0 and row["metrics"]["attempt"] == 2.0
