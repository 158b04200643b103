"""The Python API (issue 15, item 6): `nas.search` runs a job from Python objects stored as
`module:attr` references, `nas.load` reopens it, and the `Job` handle answers exactly what
the CLI commands answer (one code path)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

import nas
from nas.cli import app
from nas.errors import NasError
from nas.job import reference_of

ROOT = Path(__file__).resolve().parents[1]

USER_MODULE = '''
import pyglove as pg

space = pg.Dict(depth=pg.oneof([1, 2, 3]), width=pg.oneof([8, 16, 32]),
                act=pg.oneof(["relu", "gelu"]), dropout=pg.floatv(0.0, 0.5))


def evaluate(arch, ctx):
    """A cheap formula of the architecture, reported once per 'epoch'."""
    for step in range(1, 3):
        ctx.report(step, score=step * arch["width"])
    return {"score": arch["depth"] * arch["width"] - 10 * arch["dropout"]}
'''


@pytest.fixture
def usermod(tmp_path, monkeypatch):
    """A user's module `apimod` in the current folder, imported as the user's script would."""
    (tmp_path / "apimod.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import apimod

    yield apimod
    sys.modules.pop("apimod", None)


@pytest.fixture
def job(usermod, tmp_path) -> nas.Job:
    return nas.search(space=usermod.space, evaluate=usermod.evaluate, strategy="evolution",
                      budget=12, objectives=[{"metric": "score", "mode": "max"}],
                      db=f"sqlite:///{tmp_path / 'api.db'}", executor="local",
                      strategy_args={"population": 4, "sample": 2}, seed=3)


def cli_json(db: str, *args: str) -> dict | list:
    result = CliRunner().invoke(app, ["--db", db, *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- objects as references ----------
@pytest.mark.integration
def test_objects_are_named_by_the_module_that_defines_them(usermod):
    assert reference_of(usermod.space) == "apimod:space"
    assert reference_of(usermod.evaluate) == "apimod:evaluate"
    from search_spaces.nb201 import NB201Space

    assert reference_of(NB201Space) == "search_spaces.nb201:NB201Space"  # a SearchSpace class
    usermod.instance = NB201Space()  # a SearchSpace instance held by the user's module
    assert reference_of(usermod.instance) == "apimod:instance"
    holder = types.ModuleType("aaa_reexport")  # sorts first, holds the same objects
    holder.space, holder.evaluate = usermod.space, usermod.evaluate
    sys.modules["aaa_reexport"] = holder
    try:
        assert reference_of(usermod.evaluate) == "apimod:evaluate"  # its __module__ first
    finally:
        del sys.modules["aaa_reexport"]


@pytest.mark.integration
def test_unreachable_objects_are_refused_in_one_line(usermod, tmp_path):
    def local(arch, ctx):
        return {}

    for obj, why in [(lambda a, c: {}, "is a lambda"), (local, "defined inside a function"),
                     (object(), "not a module-level name")]:
        with pytest.raises(NasError, match=why) as info:
            nas.search(space=usermod.space, evaluate=obj, budget=2,
                       objectives=[{"metric": "score"}], db=f"sqlite:///{tmp_path / 'x.db'}")
        assert "\n" not in str(info.value) and "evaluate=" in str(info.value)
    assert not (tmp_path / "x.db").exists()  # nothing written


def test_a_bad_spec_field_is_refused_before_the_database_is_touched(usermod, tmp_path):
    with pytest.raises(NasError, match="spec field 'parallelism'"):
        nas.search(space=usermod.space, evaluate=usermod.evaluate, budget=2,
                   objectives=[{"metric": "score"}], db=f"sqlite:///{tmp_path / 'x.db'}",
                   parallelism=0)
    assert not (tmp_path / "x.db").exists()


@pytest.mark.integration
def test_a_script_run_as_main_is_named_after_its_file(usermod, tmp_path):
    """`python search.py` defining `evaluate` itself: stored as `search:evaluate`, found
    again in the same process without running the script twice (the call is guarded)."""
    (tmp_path / "search.py").write_text(textwrap.dedent('''
        import sys
        import nas
        from apimod import space

        RUNS = getattr(sys.modules.get("search"), "RUNS", 0) + 1

        def evaluate(arch, ctx):
            return {"score": float(arch["width"])}

        if __name__ == "__main__":
            job = nas.search(space=space, evaluate=evaluate, strategy="random", budget=4,
                             objectives=[{"metric": "score"}], db=sys.argv[1],
                             executor="local")
            spec = job.storage.jobs.get(job.id).spec
            print(spec["space"], spec["evaluator"], job.status()["status"], RUNS)
    '''))
    db = f"sqlite:///{tmp_path / 'script.db'}"
    done = subprocess.run([sys.executable, "search.py", db], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["apimod:space", "search:evaluate", "completed", "1"]


# ---- the handle answers what the CLI answers ----------
@pytest.mark.integration
def test_search_runs_the_job_and_the_handle_matches_the_cli(job, tmp_path):
    db = job.db
    assert job.status()["status"] == "completed"
    spec = job.storage.jobs.get(job.id).spec
    assert (spec["space"], spec["evaluator"]) == ("apimod:space", "apimod:evaluate")
    cli_status = cli_json(db, "status", str(job.id))
    mine = job.status()
    for volatile in ("lease_owner", "lease_expires_at", "created_at", "updated_at"):
        cli_status.pop(volatile), mine.pop(volatile)
    phases = [(p["phase"], p["done"], p["total"]) for p in mine.pop("progress")]
    assert phases == [(p["phase"], p["done"], p["total"]) for p in cli_status.pop("progress")]
    assert phases == [("trials", 12, 12)]
    assert json.loads(json.dumps(mine)) == cli_status
    assert job.best(top=3) == cli_json(db, "best", str(job.id), "--top", "3")["results"]
    assert [t["objectives"]["score"] for t in job.best(top=12)] == sorted(
        (t["objectives"]["score"] for t in job.best(top=12)), reverse=True)


@pytest.mark.integration
def test_pareto_matches_the_cli(job, tmp_path):
    from nas.latency import import_csv

    rows = job.trials().to_dict("records")
    path = tmp_path / "latency.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arch", "latency_ms"])
        for r in rows:
            writer.writerow([r["key"], r["arch"]["depth"] * r["arch"]["width"] / 10])
    import_csv(job.storage, "apimod:space", "phone", path)
    front = job.pareto("phone")
    assert front == cli_json(job.db, "pareto", str(job.id), "--device", "phone")["front"]
    assert front and all(t["device_source"] == "imported" for t in front)
    assert job.best(top=2, device="phone", max_latency_ms=2.0) == cli_json(
        job.db, "best", str(job.id), "--device", "phone", "--max-latency-ms", "2",
        "--top", "2")["results"]


@pytest.mark.integration
def test_trials_export_load_cancel_and_resume(job, tmp_path):
    frame = job.trials()
    assert len(frame) == 12 and set(frame["status"]) == {"completed"}
    assert {"trial", "status", "key", "arch", "score", "feasible"} <= set(frame.columns)
    assert frame["score"].max() == job.best(top=1)[0]["objectives"]["score"]

    summary = job.export(tmp_path / "best.json", format="json")
    assert summary["trial"] == job.best(top=1)[0]["trial"]
    assert json.loads((tmp_path / "best.json").read_text())["arch"] == summary["arch"]
    with pytest.raises(NasError, match="trial must be a positive"):
        job.export(tmp_path / "x.json", trial=0, format="json")

    again = nas.load(job.id, db=job.db)
    assert again.best() == job.best() and repr(again) == f"<nas.Job {job.id} in {job.db}>"
    with pytest.raises(NasError, match="already completed"):
        again.resume()
    with pytest.raises(NasError, match="already completed"):
        again.cancel()
    with pytest.raises(NasError):
        nas.load(job.id + 1, db=job.db)
    with pytest.raises(NasError):
        nas.load(1, db=f"sqlite:///{tmp_path / 'missing.db'}")


@pytest.mark.integration
def test_trials_without_pandas_are_dicts(job, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    records = job.trials()
    assert isinstance(records, list) and len(records) == 12
    assert {"trial", "status", "key", "arch", "score", "feasible"} <= set(records[0])


@pytest.mark.integration
def test_import_nas_stays_cheap():
    """`import nas` loads none of the API's dependencies until `nas.search` is used."""
    code = ("import sys, nas; heavy = [m for m in ('nas.job', 'nas.storage', 'sqlalchemy', "
            "'torch', 'ray') if m in sys.modules]; print(heavy); nas.search; "
            "print('nas.job' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.stdout.split("\n")[:2] == ["[]", "True"], done.stderr


@pytest.mark.integration
def test_resume_and_cancel_through_the_handle(usermod, tmp_path):
    """A job submitted but never run: the handle resumes it here to the end of its budget; a
    pending job is cancelled at once."""
    from nas import api
    from nas.storage import Storage

    db = f"sqlite:///{tmp_path / 'resume.db'}"
    storage = Storage(db)
    spec = {"space": "apimod:space", "evaluator": "apimod:evaluate", "strategy": "random",
            "objectives": [{"metric": "score"}], "budget": {"trials": 6}, "executor": "local"}
    first, second = api.submit(storage, spec), api.submit(storage, spec)
    job = nas.load(first, db=db)
    assert job.resume() == "completed" and len(job.trials()) == 6
    assert nas.load(second, db=db).cancel() == "cancelled"
    assert nas.load(second, db=db).status()["status"] == "cancelled"


@pytest.mark.system
def test_ctrl_c_pauses_the_search_and_the_handle_resumes_it(usermod, tmp_path):
    """SIGINT during `nas.search` pauses the job and says how to go on; `resume()` ends it
    with every trial once."""
    import signal
    import time

    (tmp_path / "slow.py").write_text(textwrap.dedent('''
        import sys, time
        import nas
        from apimod import space

        def evaluate(arch, ctx):
            time.sleep(0.2)
            return {"score": float(arch["width"])}

        if __name__ == "__main__":
            print("started", flush=True)
            nas.search(space=space, evaluate=evaluate, strategy="random", budget=20,
                       objectives=[{"metric": "score"}], db=sys.argv[1], executor="local")
    '''))
    db = f"sqlite:///{tmp_path / 'slow.db'}"
    process = subprocess.Popen([sys.executable, "slow.py", db], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert process.stdout.readline() == "started\n"
    time.sleep(4.0)  # imports, then some trials
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert f"nas: job 1 paused; nas.load(1, db='{db}').resume() continues it" in stderr
    job = nas.load(1, db=db)
    assert job.status()["status"] == "paused" and job.status()["trials"]["completed"] < 20
    try:
        assert job.resume() == "completed"  # imports slow.py here: its call is guarded
    finally:
        sys.modules.pop("slow", None)
    assert sorted(job.trials()["trial"]) == list(range(1, 21))
