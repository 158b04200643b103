"""The Ray executor on a real local Ray: batches, results, and retries of dead workers."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from nas import api
from nas.storage import Storage
from tests.conftest import nb201_spec
from workers import EvaluatorSpec, TrialTask
from workers.executors import RayExecutor

pytestmark = pytest.mark.ray

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"  # noqa: E501


def _spec(delay: float = 0.0) -> EvaluatorSpec:
    return EvaluatorSpec("nb201", {}, "benchmark", {"latency_table": "hw-nas-bench-cifar10",
                                                    "delay_s": delay})


def _task(number: int = 1, attempt: int = 1) -> TrialTask:
    from search_spaces import get_space

    return TrialTask(number, ARCH, get_space("nb201").from_key(ARCH), attempt)


def _poll_all(executor: RayExecutor, timeout: float = 60.0) -> list:
    results, deadline = [], time.time() + timeout
    while executor.in_flight() and time.time() < deadline:
        results.extend(executor.poll(timeout=1.0))
    return results


def _kill_worker_running_batch(deadline_s: float = 30.0) -> int:
    """SIGKILL the Ray worker process that is executing `evaluate_batch`: one of this test
    process's own Ray (its descendants), never another Ray on the machine."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        for proc in psutil.Process().children(recursive=True):
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.NoSuchProcess:
                continue
            if cmdline.startswith("ray::evaluate_batch"):
                os.kill(proc.pid, signal.SIGKILL)
                return proc.pid
        time.sleep(0.05)
    raise AssertionError("no Ray worker ran evaluate_batch")


def test_batch_results_come_back_with_worker_and_measurements(ray_local):
    executor = RayExecutor(_spec(), slots=2)
    executor.submit([_task(1), _task(2)])
    results = _poll_all(executor)
    assert sorted(r.number for r in results) == [1, 2]
    assert all(r.status == "completed" and r.metrics["valid_acc"] > 80 for r in results)
    assert all(r.worker and str(os.getpid()) not in r.worker for r in results)
    assert {m["device"] for m in results[0].measurements} >= {"pixel3", "edgegpu"}


def _results_with_worker_killed(max_attempts: int) -> list:
    """Run one slow trial and SIGKILL the worker running it once."""
    executor = RayExecutor(_spec(delay=3.0), slots=1, max_attempts=max_attempts)
    executor.submit([_task()])
    killer = threading.Thread(target=_kill_worker_running_batch)
    killer.start()
    results = _poll_all(executor)
    killer.join()
    return results


def test_trial_whose_worker_died_is_retried(ray_local):
    results = _results_with_worker_killed(max_attempts=3)
    assert len(results) == 1
    assert results[0].status == "completed" and results[0].attempt == 2


def test_trial_out_of_attempts_fails_with_a_clear_error(ray_local):
    results = _results_with_worker_killed(max_attempts=1)
    assert len(results) == 1 and results[0].status == "failed"
    assert "worker lost" in results[0].error and "attempt 1 of 1" in results[0].error


def test_job_through_ray_matches_local_executor(ray_local, sqlite_url):
    storage = Storage(sqlite_url)
    via_ray = api.submit(storage, nb201_spec(executor="ray", budget={"trials": 60}))
    local = api.submit(storage, nb201_spec(executor="local", budget={"trials": 60}))
    assert api.run(storage, via_ray) == "completed"
    assert api.run(storage, local) == "completed"
    keys = [[r.key for r in storage.trials.load(j)] for j in (via_ray, local)]
    assert keys[0] == keys[1] and len(keys[0]) == 60
    from sqlalchemy import select

    from nas.storage.schema import trials

    with storage.engine.connect() as conn:
        workers = set(conn.execute(select(trials.c.worker).where(
            trials.c.job_id == via_ray)).scalars())
    assert all(w and w.split(":")[1] != str(os.getpid()) for w in workers)
