"""User code travels to Ray workers (issue 15, item 5), and a job knows the code it ran.

The cluster is a real 2-node `ray.cluster_utils.Cluster` whose processes are started with a
`PYTHONPATH` of the repository root only: its workers have the project installed, as any
dependency, and have never seen the user's folder. The user's module (`usermod`: a PyGlove
space and an evaluate function) lives in a folder of its own.

The driver is `python -m nas --ray-address ADDR submit --wait` in a subprocess that finds
`usermod` through its own `PYTHONPATH`, with its current folder elsewhere: Ray puts a
driver's current folder on its workers' path (`py_driver_sys_path`), which on one machine
would let the workers import the module from the user's folder itself and hide whether it
travelled (on a real cluster that folder does not exist on the other machines). The control
run with shipping switched off shows that the workers then fail to import it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, update

from nas import api
from nas.code_check import NO_SHIPPING_ENV, CodeChangedError, check_code
from nas.driver import Driver
from nas.storage import Storage, utcnow
from nas.storage.schema import jobs, trials
from tests.conftest import ROOT, nb201_spec, ray_test_cluster
from workers.user_code import find_user_code

NODE_ARGS = {"num_cpus": 2, "object_store_memory": 100 * 2**20}
WORKER = re.compile(r"^[^:]+:(\d+):node=([0-9a-f]{8})$")
JOB_TIMEOUT_S = 240.0

USER_MODULE = '''
import time

import pyglove as pg

space = pg.Dict(depth=pg.oneof([2, 3, 4]), width=pg.oneof([16, 32, 64]),
                act=pg.oneof(["relu", "gelu"]), dropout=pg.floatv(0.0, 0.5))


def evaluate(arch, ctx):
    """A made-up score: deeper and wider is better, dropout costs a little."""
    time.sleep(0.05)
    return {"score": arch["depth"] * arch["width"] - 10 * arch["dropout"]}
'''

def _scoring(score: float) -> str:
    """A user module whose evaluate gives every architecture `score`."""
    return f'''
import time


def evaluate(arch, ctx):
    time.sleep(0.01)
    return {{"score": {score}}}
'''


# ---- helpers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two nodes whose raylets (and so workers) have PYTHONPATH = the repository root only."""
    kept = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT)
    try:
        with ray_test_cluster(**NODE_ARGS) as cluster:
            cluster.add_node(**NODE_ARGS)
            cluster.wait_for_nodes()
            yield cluster
    finally:
        if kept is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = kept


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "usermod.py").write_text(USER_MODULE)
    return folder


def _user_spec(tmp_path: Path, budget: int, **overrides: Any) -> Path:
    spec = {"name": "user-code", "space": "usermod:space", "strategy": "random",
            "evaluator": "usermod:evaluate", "objectives": [{"metric": "score", "mode": "max"}],
            "budget": {"trials": budget}, "executor": "ray", "parallelism": 2,
            "batch_size": 1, "seed": 0, **overrides}
    path = tmp_path / f"spec-{budget}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _nas(args: list[str], *, cwd: Path, env: dict[str, str],
         timeout: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


def _driver_env(user_folder: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The driver finds `usermod` on its own PYTHONPATH (see the module docstring)."""
    return {**os.environ, "PYTHONPATH": f"{user_folder}{os.pathsep}{ROOT}",
            "NAS_ARTIFACTS": str(tmp_path / "artifacts"), **extra}


def _elsewhere(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir(exist_ok=True)
    return folder


def _trial_rows(storage: Storage, job: int) -> list[Any]:
    query = select(trials.c.number, trials.c.status, trials.c.worker, trials.c.error) \
        .where(trials.c.job_id == job).order_by(trials.c.number)
    with storage.engine.connect() as conn:
        return list(conn.execute(query))


def _only_job(storage: Storage) -> int:
    [job] = [j.id for j in storage.jobs.all()]
    return job


# ---- finding the user code (no Ray) -----------------------------------------------------------
def test_user_code_is_the_modules_outside_installed_packages(tmp_path, monkeypatch):
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "spaces.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)  # found from the current folder, as `module:attr` references
    monkeypatch.syspath_prepend(str(tmp_path))
    code = find_user_code(["usermod", "userpkg.spaces", "numpy", "json", "nas.spec",
                           "workers.task", "no_such_module_here"])
    assert code is not None
    # a package travels whole; installed (numpy), stdlib (json) and this project's editable
    # install (nas, workers) do not; a missing module is left to the reference's own error
    assert code.paths == {"usermod": str(tmp_path / "usermod.py"), "userpkg": str(package)}
    assert find_user_code(["numpy", "json", "nas.spec"]) is None

    before = code.sha256
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "spaces.cpython-311.pyc").write_bytes(b"bytecode")
    assert find_user_code(["usermod", "userpkg.spaces"]).sha256 == before  # caches ignored
    (package / "spaces.py").write_text("X = 2\n")
    changed = find_user_code(["usermod", "userpkg.spaces"])
    assert changed.sha256 != before
    assert changed.digests["usermod"] == code.digests["usermod"]
    assert changed.digests["userpkg"] != code.digests["userpkg"]


@pytest.mark.integration
def test_a_job_without_user_modules_records_no_code_and_is_never_refused(sqlite_url):
    storage = Storage(sqlite_url)
    job = api.submit(storage, nb201_spec())
    assert check_code(storage, job) is None
    assert storage.jobs.get(job).code is None
    storage.close()


# ---- a real 2-node cluster --------------------------------------------------------------------
@pytest.mark.system
@pytest.mark.ray
@pytest.mark.slow
def test_user_code_travels_to_workers_that_never_saw_it(cluster, user_folder, tmp_path):
    """Trials of a user space and evaluator complete on both nodes; the control run, with
    shipping switched off, fails on the workers with the module not found (the test bites)."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    common = ["--db", url, "--ray-address", cluster.address]
    done = _nas([*common, "submit", str(_user_spec(tmp_path, budget=12)), "--wait", "--json"],
                cwd=_elsewhere(tmp_path), env=_driver_env(user_folder, tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    storage = Storage(url)
    job = _only_job(storage)
    rows = _trial_rows(storage, job)
    assert [r.status for r in rows] == ["completed"] * 12, rows
    nodes = {WORKER.match(r.worker).group(2) for r in rows}
    assert nodes == {n.node_id[:8] for n in [cluster.head_node, *cluster.worker_nodes]}
    code = storage.jobs.get(job).code
    assert code["modules"].keys() == {"usermod"}
    assert len(code["sha256"]) == 64

    control = _nas([*common, "submit", str(_user_spec(tmp_path, budget=2, max_attempts=1)),
                    "--wait", "--json"], cwd=_elsewhere(tmp_path),
                   env=_driver_env(user_folder, tmp_path, **{NO_SHIPPING_ENV: "1"}))
    assert control.returncode == 1, control.stdout[-2000:] + control.stderr[-3000:]
    control_job = max(j.id for j in storage.jobs.all())
    errors = [r.error for r in _trial_rows(storage, control_job)]
    assert errors and all("no module named 'usermod'" in (e or "").lower() for e in errors), \
        errors
    storage.close()


# ---- the code hash ----------------------------------------------------------------------------
def _paused_job(tmp_path: Path, user_folder: Path, monkeypatch: pytest.MonkeyPatch
                ) -> tuple[Storage, int]:
    """A job over nb201 with `usermod:evaluate` (score 1.0), paused by its driver's stop
    event after its first trials, run from the user's folder in this process."""
    (user_folder / "usermod.py").write_text(_scoring(1.0))
    monkeypatch.chdir(user_folder)
    monkeypatch.delitem(sys.modules, "usermod", raising=False)  # another test's usermod
    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    storage = Storage(f"sqlite:///{tmp_path / 'nas.db'}")
    spec = yaml.safe_load(_user_spec(tmp_path, budget=40, space="nb201",
                                     executor="local").read_text())
    job = api.submit(storage, spec)
    stop = threading.Event()
    stop.set()  # the job pauses at its first heartbeat
    assert Driver(storage, job, stop=stop, heartbeat_s=0.05).run() == "paused"
    assert 0 < len(storage.trials.load(job)) < 40
    return storage, job


def _new_code(user_folder: Path) -> None:
    """The user edits the module (score 2.0); this process forgets the old one."""
    (user_folder / "usermod.py").write_text(_scoring(2.0))
    sys.modules.pop("usermod", None)


def _scores(storage: Storage, job: int) -> set[float]:
    return {row.metrics["score"] for row in storage.trials.load(job)}


@pytest.mark.system
def test_resume_with_other_code_is_refused_unless_allowed(user_folder, tmp_path,
                                                          monkeypatch):
    """The job records its code at its first start; after an edit of the module,
    `nas resume` refuses in one line naming the module, changing nothing;
    `--allow-code-change` runs it to the end with the new code, which it records."""
    storage, job = _paused_job(tmp_path, user_folder, monkeypatch)
    before = storage.jobs.get(job)
    assert before.code["modules"].keys() == {"usermod"}
    assert before.code["sha256"] == find_user_code(["usermod"]).sha256
    _new_code(user_folder)
    env = {**os.environ, "NAS_ARTIFACTS": str(tmp_path / "artifacts")}
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    refused = _nas(["--db", url, "resume", str(job), "--wait"], cwd=user_folder, env=env,
                   timeout=120)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "usermod" in lines[0] and "--allow-code-change" in lines[0], \
        refused.stderr
    after = storage.jobs.get(job)
    fields = ("status", "code", "updated_at", "error")
    assert [getattr(after, f) for f in fields] == [getattr(before, f) for f in fields]

    allowed = _nas(["--db", url, "resume", str(job), "--allow-code-change", "--wait"],
                   cwd=user_folder, env=env, timeout=120)
    assert allowed.returncode == 0, allowed.stdout[-2000:] + allowed.stderr[-3000:]
    resumed = storage.jobs.get(job)
    assert resumed.status == "completed" and len(storage.trials.load(job)) == 40
    assert resumed.code["sha256"] == find_user_code(["usermod"]).sha256 \
        != before.code["sha256"]
    assert _scores(storage, job) == {1.0, 2.0}  # the old code's trials, then the new code's
    storage.close()


@pytest.mark.integration
def test_api_resume_and_a_serve_takeover_refuse_other_code(user_folder, tmp_path,
                                                           monkeypatch):
    """`api.resume` refuses as `nas resume` does; a `nas serve` taking the job over from a
    dead driver on a machine with other code fails it with that line instead of running it."""
    from nas.serve import Server

    storage, job = _paused_job(tmp_path, user_folder, monkeypatch)
    recorded = storage.jobs.get(job).code
    trials_before = len(storage.trials.load(job))
    _new_code(user_folder)
    with pytest.raises(CodeChangedError, match=r"job \d+ ran other code: module usermod "):
        api.resume(storage, job)
    assert storage.jobs.get(job).code == recorded
    assert storage.jobs.get(job).status == "paused"

    with storage.engine.begin() as conn:  # its driver died mid-run elsewhere
        conn.execute(update(jobs).where(jobs.c.id == job).values(
            status="running", lease_owner="elsewhere:1:gone",
            lease_expires_at=utcnow() - timedelta(seconds=1)))
    lines: list[str] = []
    assert Server(storage, once=True, poll_s=0.2, allow_modules=frozenset({"usermod"}),
                  log=lines.append).run() == 1
    taken = storage.jobs.get(job)
    assert taken.status == "failed" and "ran other code" in taken.error, taken.error
    assert taken.code == recorded and len(storage.trials.load(job)) == trials_before
    assert any(f"taking over job {job}" in line for line in lines), lines
    assert api.resume(storage, job, allow_code_change=True) == "completed"
    assert storage.jobs.get(job).code["sha256"] == find_user_code(["usermod"]).sha256
    storage.close()
