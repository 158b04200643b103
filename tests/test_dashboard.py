"""`nas dashboard`'s HTTP layer over real SQLite and PostgreSQL databases (Starlette's
TestClient, no browser): pages, the JSON the pages poll, the server-side trials table, the
budget panel agreeing with `nas best`, downloads, read-only mode, actions, the token, and
the command's bad input (a missing or foreign database, a port in use)."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas import api, results
from nas.cli import app as cli_app
from nas.dashboard.app import create_app
from nas.storage import Storage, get_trial, trials_page
from tests.conftest import nb201_spec, nb201_table_subset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DEVICE = "pixel3"


def small_table(path: Path, rows: int = 12000, seed: int = 0) -> Path:
    """`rows` random cells of the shipped NB201 table: the other cells fail as trials."""
    return nb201_table_subset(path, rows, seed)


def run_job(storage: Storage, tmp_path: Path, trials: int = 40) -> int:
    """A finished NB201 job with completed and failed trials and pixel3 latencies."""
    table = small_table(tmp_path / "small.csv")
    job = api.submit(storage, nb201_spec(
        name="dash-job", strategy="random", strategy_args={}, budget={"trials": trials},
        evaluator_args={"table": str(table), "latency_table": "hw-nas-bench-cifar10"}))
    api.run(storage, job)
    return job


@pytest.fixture
def board(db_url, tmp_path, monkeypatch):
    """(storage, job id, a read-only client) over a database holding one finished job."""
    from starlette.testclient import TestClient

    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    storage = Storage(db_url)
    job = run_job(storage, tmp_path)
    with TestClient(create_app(storage)) as client:
        yield storage, job, client
    storage.close()


@pytest.mark.integration
def test_the_jobs_page_and_its_json_show_every_job(board):
    storage, job, client = board
    page = client.get("/")
    assert page.status_code == 200 and "dash-job" in page.text
    assert f'href="/jobs/{job}"' in page.text
    (row,) = client.get("/api/jobs").json()
    counts = storage.trials.counts(job)
    assert row["status"] == "completed" and row["runner"] is None
    assert row["trials"]["completed"] == counts["completed"]
    assert row["trials"]["failed"] == counts["failed"] > 0
    assert row["best"]["trial"] == results.status(storage, job)["best"]["trial"]
    trials_phase = [p for p in row["progress"] if p["phase"] == "trials"]
    assert trials_phase and trials_phase[0]["fraction"] == 1.0


@pytest.mark.integration
def test_the_job_page_shows_status_progress_failures_and_charts(board):
    storage, job, client = board
    assert client.get(f"/jobs/{job}").status_code == 200
    summary = client.get(f"/api/jobs/{job}").json()
    status = results.status(storage, job)
    assert summary["trials"] == status["trials"]
    assert summary["best"]["trial"] == status["best"]["trial"]
    assert status["trials"]["failed"] > 0
    assert [(f["error"], f["count"]) for f in summary["failures"]] == \
        storage.trials.common_errors(job, limit=10)
    assert summary["actions"] == {"cancel": False, "resume": False}  # read-only
    from nas import insights
    from nas.dashboard import _views

    assert _views.job_devices(storage, job) == insights.job_devices(storage, job) == \
        ["edgegpu", "fpga", "pixel3", "raspi4"]
    history = client.get(f"/api/jobs/{job}/charts/history").json()["data"]
    completed = next(t for t in history if t["name"].startswith("completed"))
    assert len(completed["x"]) == status["trials"]["completed"]
    importance = client.get(f"/api/jobs/{job}/charts/importance").json()
    assert importance["data"][0]["type"] == "bar"
    parallel = client.get(f"/api/jobs/{job}/charts/parallel").json()
    assert len(parallel["data"][0]["dimensions"]) == 6 + 1  # NB201's 6 edges, the objective
    assert client.get(f"/api/jobs/{job}/charts/pie").status_code == 404


@pytest.mark.integration
def test_the_budget_panel_lists_what_nas_best_returns(board):
    storage, job, client = board
    panel = client.get(f"/api/jobs/{job}/pareto", params={"device": DEVICE}).json()
    low, high = panel["range"]
    for budget in (low, (low + high) / 2, high):
        budget = round(budget, 3)
        shown = client.get(f"/api/jobs/{job}/pareto",
                           params={"device": DEVICE, "max_latency_ms": budget}).json()
        expected = results.best(storage, job, 5, DEVICE, budget)["results"]
        assert [r["trial"] for r in shown["best"]] == [r["trial"] for r in expected]
        assert all(r["device_value"] <= budget for r in shown["best"])
        best = client.get(f"/api/jobs/{job}/best",
                          params={"device": DEVICE, "max_latency_ms": budget}).json()
        assert [r["trial"] for r in best["results"]] == [r["trial"] for r in expected]
    tight = client.get(f"/api/jobs/{job}/pareto",
                       params={"device": DEVICE, "max_latency_ms": round(low, 3)}).json()
    loose = client.get(f"/api/jobs/{job}/pareto",
                       params={"device": DEVICE, "max_latency_ms": round(high, 3)}).json()
    assert [r["trial"] for r in tight["best"]] != [r["trial"] for r in loose["best"]]


@pytest.mark.integration
def test_the_trials_table_is_sorted_filtered_and_paginated_by_the_server(board):
    storage, job, client = board
    first = client.get(f"/api/jobs/{job}/trials", params={"limit": 7}).json()
    second = client.get(f"/api/jobs/{job}/trials", params={"limit": 7, "offset": 7}).json()
    expected = trials_page(storage, job, limit=14)
    assert [r["trial"] for r in first["rows"] + second["rows"]] == \
        [r["trial"] for r in expected.rows]
    scores = [r["score"] for r in first["rows"] + second["rows"]]
    assert scores == sorted(scores, reverse=True)
    assert first["total"] == sum(storage.trials.counts(job).values())
    failed = client.get(f"/api/jobs/{job}/trials",
                        params={"status": "failed", "sort": "number", "order": "asc"}).json()
    assert failed["total"] == storage.trials.counts(job)["failed"]
    assert {r["status"] for r in failed["rows"]} == {"failed"}
    numbers = [r["trial"] for r in failed["rows"]]
    assert numbers == sorted(numbers) and all(r["error"] for r in failed["rows"])


@pytest.mark.integration
def test_failed_trials_come_with_their_errors(board):
    storage, job, client = board
    failed = client.get(f"/api/jobs/{job}/failed").json()
    assert failed
    for row in failed:
        stored = get_trial(storage, job, row["trial"])
        assert stored["status"] == "failed" and row["error"] == stored["error"]


@pytest.mark.integration
def test_a_trial_page_shows_metrics_measurements_picture_and_downloads(board):
    storage, job, client = board
    best = results.status(storage, job)["best"]
    page = client.get(f"/jobs/{job}/trials/{best['trial']}")
    assert page.status_code == 200
    assert best["key"] in page.text and "benchmark" in page.text  # a measurement's source
    assert 'data-kind="nb201"' in page.text  # the cell picture
    spec = client.get(f"/jobs/{job}/trials/{best['trial']}/spec.json")
    assert "attachment" in spec.headers["content-disposition"]
    assert spec.json()["key"] == best["key"] and spec.json()["arch"] == best["arch"]
    assert any(m["device"] == DEVICE for m in spec.json()["measurements"])
    model = client.get(f"/jobs/{job}/trials/{best['trial']}/model.onnx")
    assert model.status_code == 200
    import onnx

    graph = onnx.load_model_from_string(model.content)
    assert graph.graph.input[0].name == "input"
    failed = next(r.number for r in storage.trials.load(job) if r.status == "failed")
    refused = client.get(f"/jobs/{job}/trials/{failed}/model.onnx")
    assert refused.status_code == 400 and "not completed" in refused.text


@pytest.mark.integration
def test_an_unknown_job_or_trial_is_a_404_page(board):
    _, job, client = board
    page = client.get("/jobs/999")
    assert page.status_code == 404 and "no job 999" in page.text
    assert client.get("/api/jobs/999").json()["error"].startswith("no job 999")
    assert client.get(f"/jobs/{job}/trials/99999").status_code == 404
    assert client.get("/jobs/0").status_code == 404
    assert client.get("/nowhere").status_code == 404
    bad = client.get(f"/api/jobs/{job}/trials", params={"limit": "many"})
    assert bad.status_code == 400 and bad.json()["error"] == \
        "limit must be a whole number, got 'many'"
    bad = client.get(f"/api/jobs/{job}/pareto", params={"device": "toaster"})
    assert bad.status_code == 400 and "toaster" in bad.json()["error"]


@pytest.mark.integration
def test_read_only_mode_has_no_buttons_and_refuses_actions(board):
    storage, job, client = board
    assert "action-cancel" not in client.get(f"/jobs/{job}").text
    pending = api.submit(storage, nb201_spec(name="waiting"))
    for action in ("cancel", "resume"):
        refused = client.post(f"/api/jobs/{pending}/{action}", headers={"x-nas-action": "1"})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    assert storage.jobs.get(pending).status == "pending"


def test_actions_cancel_and_reopen_a_job_when_allowed(db_url, tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    storage = Storage(db_url)
    job = api.submit(storage, nb201_spec(name="to-cancel"))
    with TestClient(create_app(storage, allow_actions=True)) as client:
        assert 'id="action-cancel"' in client.get(f"/jobs/{job}").text
        # a cross-site form cannot add the header: refused
        assert client.post(f"/api/jobs/{job}/cancel").status_code == 403
        done = client.post(f"/api/jobs/{job}/cancel", headers={"x-nas-action": "cancel"})
        assert done.json() == {"job": job, "status": "cancelled"}
        assert storage.jobs.get(job).status == "cancelled"
        assert client.get(f"/api/jobs/{job}").json()["actions"]["resume"] is True
        again = client.post(f"/api/jobs/{job}/resume", headers={"x-nas-action": "resume"})
        assert again.json()["status"] == "pending"
        job_row = storage.jobs.get(job)
        assert job_row.status == "pending" and not job_row.cancel_requested
        assert job_row.lease_owner is None  # no driver runs inside the web server
    storage.close()


def test_the_token_is_required_on_every_request(sqlite_url):
    from starlette.testclient import TestClient

    storage = Storage(sqlite_url)
    client = TestClient(create_app(storage, token="s3cret"), follow_redirects=False)
    for path in ("/", "/api/jobs", "/static/dashboard.js", "/static/plotly.min.js"):
        assert client.get(path).status_code == 401
    assert client.get("/api/jobs", headers={"x-nas-token": "wrong"}).status_code == 401
    assert client.get("/api/jobs", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/jobs", headers={"x-nas-token": "s3cret"}).status_code == 200
    landing = client.get("/?token=s3cret")
    assert landing.status_code == 303 and landing.headers["location"] == "/"
    cookie = landing.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert client.get("/api/jobs").status_code == 200  # the cookie carries it from now on
    storage.close()


def test_bound_to_localhost_other_host_names_are_refused(sqlite_url):
    from starlette.testclient import TestClient

    from nas.dashboard.server import LOCAL_NAMES

    storage = Storage(sqlite_url)
    client = TestClient(create_app(storage, allowed_hosts=LOCAL_NAMES),
                        base_url="http://127.0.0.1:8080")
    assert client.get("/api/jobs").status_code == 200
    assert client.get("/api/jobs", headers={"host": "attacker.example"}).status_code == 400
    storage.close()


def test_pages_are_escaped_and_scripts_only_from_the_server(sqlite_url):
    from starlette.testclient import TestClient

    storage = Storage(sqlite_url)
    api.submit(storage, nb201_spec(name="<script>alert(1)</script>"))
    client = TestClient(create_app(storage))
    page = client.get("/")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "script-src 'self' 'unsafe-eval';" in page.headers["content-security-policy"]
    plotly = client.get("/static/plotly.min.js")
    assert plotly.status_code == 200 and b"plotly" in plotly.content[:2000].lower()
    assert "cdn" not in page.text.lower()
    storage.close()


# ---- the command ------------------------------------------------------------------------------
def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, list(args))
    return result.exit_code, result.output


def test_a_missing_database_is_one_line_exit_2(tmp_path):
    code, output = _cli("dashboard", "--db", f"sqlite:///{tmp_path / 'nope.db'}")
    assert code == 2
    assert output.strip().splitlines() == [
        f"error: --db: SQLite file {str(tmp_path / 'nope.db')!r} does not exist"]


def test_a_database_that_is_not_ours_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table invoices (id integer primary key, total real)")
    before = path.read_bytes()
    code, output = _cli("dashboard", "--db", f"sqlite:///{path}")
    assert code == 2 and len(output.strip().splitlines()) == 1
    assert "is not a nas database" in output and "'invoices'" in output
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master")}
    assert tables == {"invoices"}
    assert path.read_bytes() == before
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    code, output = _cli("dashboard", "--db", f"sqlite:///{garbage}")
    assert code == 2 and "is not a valid SQLite database" in output


def test_a_port_in_use_is_one_line_exit_2(sqlite_url):
    Storage(sqlite_url).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, output = _cli("dashboard", "--db", sqlite_url, "--port", str(port))
    assert code == 2
    assert output.strip().splitlines() == [
        f"error: --port: port {port} on 127.0.0.1 is already in use; give another with --port"]
    code, output = _cli("dashboard", "--db", sqlite_url, "--port", "70000")
    assert code == 2 and "--port must be between 1 and 65535" in output


def test_an_empty_token_file_is_refused(sqlite_url, tmp_path):
    empty = tmp_path / "token"
    empty.write_text("\n")
    code, output = _cli("dashboard", "--db", sqlite_url, "--token-file", str(empty))
    assert code == 2 and output.strip() == f"error: --token-file: {str(empty)!r} is empty"


def drain_output(proc: subprocess.Popen) -> None:
    """Keep reading the server's output into `proc.output` (a list of lines) in a daemon
    thread: a full pipe would block the server, and a failing browser test shows what the
    server logged (an exception behind a 500)."""
    import threading

    proc.output = []

    def read() -> None:
        for line in proc.stdout:
            proc.output.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()


def start_dashboard(url: str, *args: str, env: dict[str, str] | None = None,
                    procs: list | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    """A `nas dashboard` process on a free port; returns it, its base URL and its first
    output lines (the URL line, after any warning)."""
    import os

    command = [sys.executable, "-m", "nas", "dashboard", "--db", url, "--port", "0", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, **(env or {})})
    if procs is not None:
        procs.append(proc)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("nas dashboard at "):
            base = line.split(" at ", 1)[1].split(" ", 1)[0].rstrip("/")
            drain_output(proc)
            return proc, base, lines
    proc.kill()
    raise AssertionError(f"nas dashboard did not start: {lines}")


@pytest.mark.system
@pytest.mark.integration
def test_the_command_serves_and_warns_when_open_to_other_machines(sqlite_url, procs):
    import httpx

    Storage(sqlite_url).close()
    proc, base, lines = start_dashboard(sqlite_url, procs=procs)
    assert lines == [f"nas dashboard at {base}/ (read-only) over {sqlite_url}; Ctrl-C stops it"]
    assert httpx.get(base + "/api/jobs").json() == []
    proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, no traceback
    assert proc.wait(20) == 0
    assert "Traceback" not in proc.stdout.read()
    proc, base, lines = start_dashboard(sqlite_url, "--host", "0.0.0.0", procs=procs)
    assert lines[0].startswith("warning: the dashboard listens on 0.0.0.0, reachable from "
                               "other machines, without a token")
    proc.terminate()
    proc.wait(20)
    proc, base, lines = start_dashboard(sqlite_url, "--host", "0.0.0.0", procs=procs,
                                        env={"NAS_DASHBOARD_TOKEN": "t0ken"})
    assert not any(line.startswith("warning") for line in lines)
    assert "token required" in lines[-1]
    port = base.rsplit(":", 1)[1]
    assert httpx.get(f"http://127.0.0.1:{port}/api/jobs").status_code == 401
    ok = httpx.get(f"http://127.0.0.1:{port}/api/jobs", headers={"x-nas-token": "t0ken"})
    assert ok.status_code == 200


@pytest.mark.integration
def test_json_of_every_endpoint_is_strict(board):
    """No NaN or Infinity in any answer (JSON.parse in the browser refuses them)."""
    _, job, client = board
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON")

    for path in ("/api/jobs", f"/api/jobs/{job}", f"/api/jobs/{job}/charts/history",
                 f"/api/jobs/{job}/trials", f"/api/jobs/{job}/failed",
                 f"/api/jobs/{job}/pareto?device={DEVICE}"):
        json.loads(client.get(path).text, parse_constant=refuse)
