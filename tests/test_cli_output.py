"""What the CLI prints about a job (issue 17): trials without a value on a device, unknown
devices, status and list output, `cancel --json`, and user strings with control characters.
Real `nas` commands through typer's runner on a real SQLite file."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from nas import api
from nas.cli import app
from nas.storage import Storage, best_trials
from tests.conftest import nb201_spec

runner = CliRunner()


def nas(*args: str, code: int = 0) -> Any:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A completed NB201 job (benchmark latencies) and `myphone` latencies imported for its
    worst trial only: its best trials have no value on `myphone`."""
    folder = tmp_path_factory.mktemp("output")
    url = f"sqlite:///{folder / 'nas.db'}"
    storage = Storage(url)
    job_id = api.submit(storage, nb201_spec(budget={"trials": 20}))
    api.run(storage, job_id)
    worst = best_trials(storage, job_id, top=100)[-1]
    storage.close()
    csv = folder / "phone.csv"
    csv.write_text(f"arch,latency_ms\n{worst['key']},3.5\n")
    nas("--db", url, "latency", "import", "--device", "myphone", str(csv))
    return {"url": url, "job": str(job_id), "worst": worst["number"], "folder": folder}


# ---- item 8: a trial with no value on the device ------------------------------------------
def test_best_on_a_device_some_trials_have_no_value_on(job):
    text = nas("--db", job["url"], "best", job["job"], "--device", "myphone", "--top", "20")
    lines = text.stdout.splitlines()
    worst = [line for line in lines if f" {job['worst']} " in line and "3.500" in line]
    assert worst and "imported" in worst[0], text.stdout
    unknown = [line for line in lines if "unknown" in line]
    assert len(unknown) == 19, text.stdout
    data = json.loads(nas("--db", job["url"], "best", job["job"], "--device", "myphone",
                          "--top", "20", "--json").stdout)
    values = {r["trial"]: (r["device_value"], r["device_source"]) for r in data["results"]}
    assert values.pop(job["worst"]) == (3.5, "imported")
    assert set(values.values()) == {(None, None)}
    assert data["unknown_latency"] == 19


def test_pareto_on_a_device_ranks_only_trials_with_a_value(job):
    data = json.loads(nas("--db", job["url"], "pareto", job["job"], "--device", "myphone",
                          "--json").stdout)
    assert data["points"] == 1 and [r["trial"] for r in data["front"]] == [job["worst"]]
    text = nas("--db", job["url"], "pareto", job["job"], "--device", "myphone").stdout
    assert "(1 of 1 trials)" in text and "3.500" in text
