"""Every `nas` command end to end, through the real CLI: typer's CliRunner on `nas.cli.app`
(fast, in-process) and real `python -m nas` subprocesses (the detached driver path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from nas import api
from nas.cli import app
from nas.storage import Storage, head_revision
from tests.conftest import ROOT, nb201_spec

EXAMPLE = ROOT / "examples" / "nb201-evolution.yaml"
BUDGET = 120
runner = CliRunner()


def nas(*args: str, env: dict[str, str] | None = None, code: int = 0) -> Any:
    """Run `nas ARGS` in-process; assert the exit status (stderr in the failure message)."""
    result = runner.invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, f"nas {' '.join(args)} -> {result.exit_code}\n" \
                                     f"stdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def nas_json(*args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(nas(*args, "--json", env=env).stdout)


def python_m_nas(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def write_spec(path: Path, **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump(nb201_spec(**overrides), sort_keys=False))
    return path


def wait_for_status(url: str, job: int, wanted: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll `nas status --json` until the job reaches `wanted`; kill its driver on timeout."""
    deadline = time.monotonic() + timeout
    data: dict[str, Any] = {}
    while time.monotonic() < deadline:
        data = nas_json("--db", url, "status", str(job))
        if data["status"] == wanted:
            return data
        if data["status"] in ("failed", "cancelled"):
            break
        time.sleep(0.25)
    owner = data.get("lease_owner") or ""
    pid = owner.split(":")[1] if owner.count(":") >= 2 else ""
    if pid.isdigit():  # the background driver this test started
        os.kill(int(pid), signal.SIGKILL)
    pytest.fail(f"job {job} did not reach {wanted!r} within {timeout}s: {data}")


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a is at least as good as b on both axes and better on one (score up, latency down)."""
    return (a["score"] >= b["score"] and a["device_value"] <= b["device_value"]
            and (a["score"] > b["score"] or a["device_value"] < b["device_value"]))


# ---- one finished search shared by the read-only commands ------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shipped example spec, run here (`submit --wait --json`) with the local executor."""
    folder = tmp_path_factory.mktemp("finished")
    url = f"sqlite:///{folder / 'nas.db'}"
    data = nas_json("--db", url, "submit", str(EXAMPLE), "--set", "executor=local",
                    "--set", f"budget.trials={BUDGET}", "--wait")
    return {"url": url, "job": data["id"], "submit": data, "folder": folder}


@pytest.mark.integration
def test_submit_wait_json_reports_the_completed_job(finished):
    data = finished["submit"]
    assert data["status"] == "completed"
    assert data["name"] == "nb201-evolution"
    assert (data["space"], data["strategy"]) == ("nb201", "evolution")
    assert data["budget"] == {"trials": BUDGET}
    assert data["trials"] == {"queued": 0, "running": 0, "completed": BUDGET, "failed": 0,
                              "pruned": 0}
    assert data["lease_owner"] is None and data["error"] is None
    best = data["best"]
    assert set(best["objectives"]) == {"valid_acc"}
    assert best["score"] == pytest.approx(best["objectives"]["valid_acc"])
    assert best["arch"]["ops"] and len(best["arch"]["ops"]) == 6
    assert 1 <= best["trial"] <= BUDGET


def test_submit_wait_with_progress_from_a_spec_file(tmp_path):
    spec = write_spec(tmp_path / "job.yaml", strategy="random", strategy_args={},
                      budget={"trials": 15}, name="small-random")
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    result = nas("--db", url, "submit", str(spec), "--set", "seed=7", "--wait")
    assert result.stdout.strip() == "job 1 completed"
    assert "15/15" in result.stderr  # the progress bar
    job = Storage(url).jobs.get(1)
    assert (job.name, job.seed, job.spec["strategy"]) == ("small-random", 7, "random")


def test_status(finished):
    url, job = finished["url"], str(finished["job"])
    data = nas_json("--db", url, "status", job)
    assert data["id"] == finished["job"] and data["status"] == "completed"
    assert data["trials"]["completed"] == BUDGET
    assert data["best"] == finished["submit"]["best"]
    assert data["lease_owner"] is None and data["driver_alive"] is False
    assert data["created_at"] <= data["updated_at"]
    text = nas("--db", url, "status", job).stdout
    assert f"job {job} [nb201-evolution]: completed" in text
    assert f"trials: {BUDGET} completed, 0 failed" in text
    assert f"best: trial {data['best']['trial']}" in text


@pytest.mark.integration
def test_list(finished, tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    first = api.submit(storage, nb201_spec(name="first"))
    second = api.submit(storage, nb201_spec(name="second", strategy="random", strategy_args={}))
    api.run(storage, second)
    rows = nas_json("--db", url, "list")
    assert [r["id"] for r in rows] == [first, second]
    assert [(r["name"], r["status"], r["strategy"]) for r in rows] == [
        ("first", "pending", "evolution"), ("second", "completed", "random")]
    zero = {"queued": 0, "running": 0, "completed": 0, "failed": 0, "pruned": 0}
    assert rows[0]["trials"] == zero and rows[1]["trials"] == {**zero, "completed": 40}
    assert all(r["space"] == "nb201" and r["created_at"] for r in rows)
    text = nas("--db", url, "list").stdout
    assert "first" in text and "second" in text and "pending" in text

    rows = nas_json("--db", finished["url"], "list")
    assert rows[0]["id"] == finished["job"] and rows[0]["trials"] == {**zero, "completed": BUDGET}


def test_best_top(finished):
    url, job = finished["url"], str(finished["job"])
    data = nas_json("--db", url, "best", job, "--top", "5")
    assert data["job"] == finished["job"] and data["device"] is None
    results = data["results"]
    assert len(results) == 5
    everything = nas_json("--db", url, "best", job, "--top", "100000")["results"]
    assert len(everything) == BUDGET
    by_score = sorted(everything, key=lambda r: (-r["score"], r["trial"]))
    assert [r["trial"] for r in results] == [r["trial"] for r in by_score[:5]]
    assert results[0] == finished["submit"]["best"]
    assert "best 5" in nas("--db", url, "best", job, "--top", "5").stdout


def test_best_under_a_latency_budget(finished):
    url, job = finished["url"], str(finished["job"])
    data = nas_json("--db", url, "best", job, "--device", "pixel3", "--max-latency-ms", "18",
                    "--top", "5")
    assert (data["device"], data["max_latency_ms"]) == ("pixel3", 18.0)
    results = data["results"]
    assert len(results) == 5
    assert all(r["device_value"] <= 18.0 for r in results)
    assert all(r["device_source"] == "benchmark" for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # brute force over every trial with a pixel3 latency
    everything = nas_json("--db", url, "best", job, "--device", "pixel3",
                          "--top", "100000")["results"]
    known = [r for r in everything if r["device_value"] is not None]
    under = sorted((r for r in known if r["device_value"] <= 18.0),
                   key=lambda r: (-r["score"], r["trial"]))
    assert [r["trial"] for r in results] == [r["trial"] for r in under[:5]]
    assert data["unknown_latency"] == len(everything) - len(known)
    text = nas("--db", url, "best", job, "--device", "pixel3", "--max-latency-ms", "18",
               "--top", "5").stdout
    assert "under 18.0 ms on pixel3" in text


@pytest.mark.integration
def test_pareto_front_and_plot(finished, tmp_path, monkeypatch):
    url, job = finished["url"], str(finished["job"])
    monkeypatch.chdir(tmp_path)
    plot = tmp_path / "pareto.png"
    data = nas_json("--db", url, "pareto", job, "--device", "edgegpu", "--plot", "pareto.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 1000
    everything = nas_json("--db", url, "best", job, "--device", "edgegpu",
                          "--top", "100000")["results"]
    rows = [r for r in everything if r["device_value"] is not None]
    assert data["points"] == len(rows) > 0
    front = data["front"]
    assert front
    latencies = [r["device_value"] for r in front]
    assert latencies == sorted(latencies)
    assert all(a["score"] < b["score"] for a, b in zip(front, front[1:], strict=False))
    # brute force: the front is exactly the non-dominated trials (up to exact duplicates)
    for point in front:
        assert not any(dominates(r, point) for r in rows), point
    on_front = {(r["device_value"], r["score"]) for r in front}
    for r in rows:
        if not any(dominates(other, r) for other in rows):
            assert (r["device_value"], r["score"]) in on_front, r
    plot.unlink()
    text = nas("--db", url, "pareto", job, "--device", "edgegpu", "--plot", str(plot)).stdout
    assert f"Pareto front on edgegpu ({len(front)} of {len(rows)} trials)" in text
    assert plot.is_file()


def _best_feasible(finished: dict[str, Any]) -> dict[str, Any]:
    rows = nas_json("--db", finished["url"], "best", str(finished["job"]),
                    "--top", "100000")["results"]
    return next(r for r in rows if r["feasible"] is True)


def test_export_json(finished, tmp_path):
    url, job = finished["url"], str(finished["job"])
    target = tmp_path / "best.json"
    summary = nas_json("--db", url, "export", job, "--best", "--format", "json",
                       "-o", str(target))
    written = json.loads(target.read_text())
    chosen = _best_feasible(finished)  # the spec has a pixel3 constraint: feasible first
    for data in (summary, written):
        assert data["job"] == finished["job"] and data["trial"] == chosen["trial"]
        assert (data["key"], data["arch"]) == (chosen["key"], chosen["arch"])
        assert data["space"] == "nb201" and data["format"] == "json"
        assert data["params"] == chosen["params"]
        devices = {m["device"] for m in data["measurements"]}
        assert {"pixel3", "edgegpu"} <= devices
    pixel3 = next(m for m in written["measurements"] if m["device"] == "pixel3"
                  and m["metric"] == "latency_ms")
    assert pixel3["value"] <= 18.0
    # a given trial, plain output
    other = tmp_path / "trial3.json"
    text = nas("--db", url, "export", job, "--trial", "3", "-o", str(other)).stdout
    assert f"exported trial 3 of job {job}" in text
    assert json.loads(other.read_text())["trial"] == 3


@pytest.mark.integration
def test_export_torchscript_and_onnx_agree(finished, tmp_path):
    import numpy as np
    import onnxruntime
    import torch

    url, job = finished["url"], str(finished["job"])
    ts_path, onnx_path = tmp_path / "best.pt", tmp_path / "best.onnx"
    ts = nas_json("--db", url, "export", job, "--best", "--format", "torchscript",
                  "-o", str(ts_path))
    ox = nas_json("--db", url, "export", job, "--best", "--format", "onnx", "-o", str(onnx_path))
    assert ts["trial"] == ox["trial"] == _best_feasible(finished)["trial"]
    assert (ts["format"], ox["format"]) == ("torchscript", "onnx")

    model = torch.jit.load(str(ts_path))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.shape == (2, 10) and np.isfinite(expected).all()

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        kinds = {k for (k,) in conn.execute("select kind from artifacts")}
    assert {"export-torchscript", "export-onnx"} <= kinds


@pytest.mark.integration
def test_cancel_a_pending_job_then_resume_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    job = api.submit(Storage(url), nb201_spec(budget={"trials": 12}))  # no driver spawned
    assert nas_json("--db", url, "status", str(job))["status"] == "pending"
    assert nas("--db", url, "cancel", str(job)).stdout.strip() == f"job {job} cancelled"
    data = nas_json("--db", url, "status", str(job))
    assert data["status"] == "cancelled" and data["trials"]["completed"] == 0
    data = nas_json("--db", url, "resume", str(job), "--wait")
    assert data["status"] == "completed" and data["trials"]["completed"] == 12


@pytest.mark.integration
def test_resume_an_interrupted_job_finishes_without_repeating_work(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    spec = nb201_spec(budget={"trials": 40}, parallelism=1, batch_size=2)
    job = api.submit(storage, spec)

    def interrupt(done: int, total: int | None, best: float | None) -> None:
        if done >= 15:
            raise KeyboardInterrupt  # what Ctrl-C does to a driver

    with pytest.raises(KeyboardInterrupt):
        api.run(storage, job, progress=interrupt)
    data = nas_json("--db", url, "status", str(job))
    assert data["status"] == "paused" and 0 < data["trials"]["completed"] < 40

    result = nas("--db", url, "resume", str(job), "--wait")
    assert result.stdout.strip() == f"job {job} completed"
    rows = storage.trials.load(job)
    assert [r.number for r in rows] == list(range(1, 41))
    assert all(r.status == "completed" for r in rows)
    assert len({r.key for r in rows}) == 40
    # the same search as an uninterrupted run of the same spec
    reference = api.submit(storage, spec)
    api.run(storage, reference)
    assert [r.key for r in rows] == [r.key for r in storage.trials.load(reference)]


@pytest.mark.integration
def test_spaces_and_strategies():
    spaces = nas_json("spaces")
    nb201 = next(s for s in spaces if s["name"] == "nb201")
    assert nb201["size"] == 15625 and nb201["decisions"] == 6
    assert nb201["input_shape"] == [3, 32, 32] and nb201["conditional"] is False
    assert {s["name"] for s in spaces} == {"darts", "hybrid", "hytra", "mbconv", "nb201", "quant",
                                           "vit"}
    mbconv = next(s for s in spaces if s["name"] == "mbconv")
    assert mbconv["conditional"] is True and mbconv["size"] > 10**15
    text = nas("spaces").stdout
    assert "15,625" in text and "5.90e+15" in text and all(s["description"] for s in spaces)
    strategies = nas_json("strategies")
    assert {"evolution", "random", "bossnas", "fbnetv5"} <= {s["name"] for s in strategies}
    assert all(s["description"] for s in strategies)
    assert "evolution" in nas("strategies").stdout


def test_db_upgrade(tmp_path):
    path = tmp_path / "fresh.db"
    url = f"sqlite:///{path}"
    for _ in range(2):  # idempotent
        result = nas("--db", url, "db", "upgrade")
        assert result.stdout.strip() == f"database at revision {head_revision()}"
    assert path.is_file()
    assert nas_json("--db", url, "list") == []


def test_db_from_the_environment_and_the_db_option(finished, tmp_path):
    other = f"sqlite:///{tmp_path / 'other.db'}"
    env = {"NAS_DB_URL": finished["url"]}
    assert [r["id"] for r in nas_json("list", env=env)] == [finished["job"]]
    assert nas_json("status", str(finished["job"]), env=env)["status"] == "completed"
    assert nas_json("--db", other, "list", env=env) == []  # --db wins over the environment


@pytest.mark.integration
def test_python_m_nas_subprocess(finished, tmp_path):
    url, job = finished["url"], str(finished["job"])
    proc = python_m_nas("--db", url, "status", job, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["best"] == finished["submit"]["best"]
    proc = python_m_nas("--db", url, "best", job, "--device", "pixel3", "--max-latency-ms", "18",
                        "--top", "3", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["results"]) == 3
    assert not (tmp_path / "nas.db").exists()  # --db was used, not the default
    script = Path(sys.executable).parent / "nas"  # the console script of the package
    if script.is_file():
        proc = subprocess.run([str(script), "--db", url, "list", "--json"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert [r["id"] for r in json.loads(proc.stdout)] == [finished["job"]]


@pytest.mark.system
def test_detached_submit_returns_at_once_and_a_background_driver_completes(tmp_path):
    spec = write_spec(tmp_path / "slow.yaml", budget={"trials": 30}, parallelism=1,
                      batch_size=1, evaluator_args={"delay_s": 0.1})
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    started = time.monotonic()
    proc = python_m_nas("--db", url, "submit", str(spec), "--json", cwd=tmp_path)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "pending"
    job = data["job"]
    assert nas_json("--db", url, "status", str(job))["status"] in ("pending", "running")
    assert took < 30
    done = wait_for_status(url, job, "completed", timeout=60)
    assert done["trials"]["completed"] == 30 and done["lease_owner"] is None
    log = tmp_path / data["log"]
    assert log.is_file() and f"job {job} completed" in log.read_text()


@pytest.mark.system
def test_detached_resume_of_an_interrupted_job(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    job = api.submit(storage, nb201_spec(budget={"trials": 30}, parallelism=1, batch_size=2))

    def interrupt(done: int, total: int | None, best: float | None) -> None:
        if done >= 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.run(storage, job, progress=interrupt)
    proc = python_m_nas("--db", url, "resume", str(job), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "resuming"
    done = wait_for_status(url, job, "completed", timeout=60)
    assert done["trials"] == {"queued": 0, "running": 0, "completed": 30, "failed": 0,
                             "pruned": 0}
    keys = [r.key for r in storage.trials.load(job)]
    assert len(keys) == len(set(keys)) == 30
