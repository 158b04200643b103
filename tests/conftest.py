"""Shared fixtures: the real benchmark data, real SQLite files and a real PostgreSQL.

Tests that need `../shared/data` or PostgreSQL skip with a reason when those are absent
(a user's fresh clone); under CI (`CI=true`) such a skip is turned into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PG_ADMIN_URL = os.environ.get("NAS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


#: Tiers (pyproject.toml): `./scripts/test.sh --fast` runs `unit` only, which is defined by
#: exclusion -- every test not marked `integration` or `system` (see the hook below).
SLOW_TIERS = ("integration", "system")
#: Fixtures that reach outside the test process: a test using one is `integration` at least.
OUT_OF_PROCESS_FIXTURES = ("ray_local", "procs", "pg_url", "pg_available")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test its tier: a test that is `slow` or needs Ray or PostgreSQL (`ray`
    marker, an out-of-process fixture, the `postgresql` case of `db_url`) is at least
    `integration`, so that the unit tier never starts Ray or a server; any other unmarked
    test is `unit`."""
    for item in items:
        if any(item.get_closest_marker(tier) for tier in SLOW_TIERS):
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (item.get_closest_marker("ray") or item.get_closest_marker("slow")
                or params.get("db_url") == "postgresql"
                or any(f in item.fixturenames for f in OUT_OF_PROCESS_FIXTURES)):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request: pytest.FixtureRequest,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit tier runs without Ray: a unit test that reaches `connect_ray` (a Ray
    executor, `nas serve`) fails, saying which tier it belongs to."""
    if request.node.get_closest_marker("unit"):
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("a unit test starts Ray: mark it integration")

        monkeypatch.setattr("workers.executors.ray.connect_ray", refuse)


def skip_or_fail(reason: str) -> None:
    """Skip on a developer's machine; fail under CI, where everything must run."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "nb201" / "nb201-cifar10.csv").is_file():
        skip_or_fail(f"benchmark data not found at {SHARED_DATA} (see shared/data/README.md)")
    return SHARED_DATA


def _pg_admin_engine():
    from sqlalchemy import create_engine

    url = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    return create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_available() -> str:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    try:
        with _pg_admin_engine().connect() as conn:
            conn.execute(text("select 1"))
    except OperationalError as exc:
        skip_or_fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: "
                     f"{str(exc.orig).splitlines()[0]}")
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_available: str):
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import text

    name = f"nas_test_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = pg_available.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nas.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a storage test against a real SQLite file and a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nas.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A Ray of this test module's own (2 CPUs) whose workers import this repository."""
    import ray

    if ray.is_initialized():  # another module's Ray (e.g. a weight-sharing job's)
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


@pytest.fixture
def procs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Processes (`subprocess.Popen`) a test starts, such as `nas serve`: any still running at
    its end is killed. Artifacts go to the test's folder."""
    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    started: list[Any] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def nb201_spec(**overrides) -> dict:
    """A small, valid NB201 job spec (local executor) for tests to adapt."""
    spec = {
        "name": "test-nb201",
        "space": "nb201",
        "strategy": "evolution",
        "strategy_args": {"population": 10, "sample": 3},
        "evaluator": "benchmark",
        "evaluator_args": {"table": "nb201-cifar10", "latency_table": "hw-nas-bench-cifar10"},
        "objectives": [{"metric": "valid_acc", "mode": "max"}],
        "budget": {"trials": 40},
        "executor": "local",
        "parallelism": 2,
        "batch_size": 4,
        "seed": 0,
    }
    spec.update(overrides)
    return spec


def nb201_table_subset(path: Path, rows: int, seed: int = 0) -> Path:
    """`rows` random cells of the shipped NB201 CIFAR-10 table, written as a CSV benchmark
    table (an `arch` column): trials of the other cells fail ("not in the table")."""
    import csv
    import gzip
    from importlib import resources

    import numpy as np

    data = resources.files("workers").joinpath("data", "nb201-cifar10.csv.gz").read_bytes()
    records = list(csv.DictReader(gzip.decompress(data).decode().splitlines()))
    keep = np.random.default_rng(seed).choice(len(records), size=rows, replace=False)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records[int(i)] for i in sorted(keep))
    return path


def kill_search_after_epoch(folder: Path, method: str, space: str, space_args: dict[str, Any],
                            args: dict[str, Any], epoch: int = 1, timeout: float = 120.0) -> None:
    """Run a weight-sharing search in a child process that stops for a minute once `epoch`
    is reported, wait until its checkpoint holds that epoch, then kill -9 it (the crash a
    resume must survive)."""
    import signal
    import subprocess
    import sys
    import textwrap

    import torch

    script = textwrap.dedent(f"""
        import time, torch
        torch.set_num_threads(1)
        from search_spaces import get_space
        from workers.weight_sharing import get_search
        space = get_space({space!r}, **{space_args!r})
        search = get_search({method!r}, space, **{args!r})
        search.run({str(folder)!r},
                   progress=lambda record: record["epoch"] == {epoch} and time.sleep(60))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env)
    checkpoint = folder / "checkpoint.pt"

    def saved_epoch() -> int | None:
        try:
            return torch.load(checkpoint, weights_only=False)["epoch"]
        except (FileNotFoundError, EOFError, RuntimeError):  # not there, or being replaced
            return None

    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if saved_epoch() == epoch:
                break
            time.sleep(0.1)
        assert saved_epoch() == epoch, f"{method}: no checkpoint of epoch {epoch}"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


def stop_then_resume(folder: Path, make_search: Callable[[], Any],
                     epochs: int = 1) -> tuple[Any, Any, Any]:
    """The stop-then-resume shape of the weight-sharing tests: a fresh search from
    `make_search` stops itself after `epochs` epochs (its `stop` hook), then another fresh one
    resumes the folder to the end. Checks that the first stopped early after exactly `epochs`
    epochs and that the second finished resuming from there; returns (the first outcome, the
    resuming search, its outcome) for the test's own comparison with an uninterrupted run."""
    polls = 0

    def stop() -> bool:
        nonlocal polls
        polls += 1
        return polls == epochs

    first = make_search().run(folder, stop=stop)
    assert not first.finished and len(first.history) == epochs
    search = make_search()
    outcome = search.run(folder)
    assert outcome.finished and outcome.resumed_from_epoch == epochs
    return first, search, outcome


def stored_proxy_scores(storage: Any, metric: str = "synflow") -> int:
    """How many `metric` scores a job's proxy evaluations stored in the measurements table
    (the device of every proxy evaluator's cache is named `proxy:...`)."""
    from sqlalchemy import func, select

    from nas.storage.schema import measurements

    with storage.read() as conn:
        return conn.execute(select(func.count()).select_from(measurements).where(
            measurements.c.device.like("proxy:%"), measurements.c.metric == metric)
        ).scalar_one()


def assert_same_outcome(outcome: Any, reference: Any) -> None:
    """Two weight-sharing search outcomes alike: derived architectures, their metrics and the
    per-epoch history (wall-clock seconds aside)."""
    assert outcome.archs == reference.archs
    assert outcome.metrics == reference.metrics

    def timeless(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in record.items() if k != "seconds"} for record in history]

    assert timeless(outcome.history) == timeless(reference.history)


def ask_unseen(strategy, space, seen: set[str], tries: int = 2000):  # noqa: ANN001, ANN201
    """The strategy's next proposal not in `seen`, asking up to `tries` times as the driver
    discards duplicates; returns (arch, key), the last proposal when every one was seen."""
    for _ in range(tries):
        arch = strategy.ask()
        key = space.key(arch)
        if key not in seen:
            break
    return arch, key


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0,
               interval: float = 0.05, logs: tuple[Path, ...] = ()) -> Any:
    """Poll `condition` until it returns a truthy value (returned); on timeout fail naming
    `what`, with the tails of `logs` (the logs of processes the test started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.is_file())
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


@contextlib.contextmanager
def ray_test_cluster(**head_args: Any) -> Iterator[Any]:
    """A `ray.cluster_utils.Cluster` of one head node (add nodes with `add_node`), in a
    private temp dir: sockets, logs and session files apart from other Ray instances on this
    machine, all removed at the end. Its processes are children of this test process, so
    exactly what it started is stopped (`ray stop` would stop other people's Ray too)."""
    import ray
    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    ray.shutdown()  # a connection left by another module would point at another instance
    # the cluster notes its address in Ray's default temp dir, which a fresh machine lacks
    os.makedirs(os.path.dirname(get_ray_address_file(None)), exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix="nas-ray-")
    cluster = Cluster(initialize_head=True, shutdown_at_exit=True,
                      head_node_args={**head_args, "include_dashboard": False,
                                      "temp_dir": temp_dir})
    try:
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
