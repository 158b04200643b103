"""What the CLI prints about a job (issue 17): trials without a value on a device, unknown
devices, status and list output, `cancel --json`, and user strings with control characters.
Real `nas` commands through typer's runner on a real SQLite file."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from nas import api
from nas.cli import app
from nas.spec import parse_spec
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
    assert "19 completed trials have no latency on myphone (shown as -)" in text.stdout
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


# ---- item 15i: a device the job has no values on --------------------------------------------
@pytest.mark.parametrize("command", [["best"], ["best", "--max-latency-ms", "5"], ["pareto"]])
def test_unknown_device_names_the_devices_the_job_has(job, command):
    result = nas("--db", job["url"], command[0], job["job"], "--device", "tpu-v9",
                 *command[1:], code=2)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "tpu-v9" in lines[0]
    for device in ("pixel3", "edgegpu", "myphone"):
        assert device in lines[0], lines[0]


def test_a_job_with_no_device_value_yet_gets_an_empty_answer(tmp_path):
    """A pending or just-started job has no device value yet: `nas best --device` answers
    with no rows (as a reader polling a running job expects), not an error."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    job = api.submit(Storage(url), nb201_spec())
    data = json.loads(nas("--db", url, "best", str(job), "--device", "pixel3", "--json").stdout)
    assert data["results"] == [] and data["unknown_latency"] == 0


# ---- item 15j: status in words, not Python reprs --------------------------------------------
def test_status_prints_budget_and_objectives_in_words(job, tmp_path):
    text = nas("--db", job["url"], "status", job["job"]).stdout
    assert "budget=20 trials" in text and "{" not in text, text
    data = json.loads(nas("--db", job["url"], "status", job["job"], "--json").stdout)
    acc = data["best"]["objectives"]["valid_acc"]
    assert f"valid_acc={acc:.4g}" in text, text
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    api.submit(Storage(url), nb201_spec(budget={"trials": 300, "seconds": 600}))
    text = nas("--db", url, "status", "1").stdout
    assert "budget=300 trials, 600 s" in text and "{" not in text, text


# ---- item 15k: list --json always gives every count ----------------------------------------
def test_list_json_gives_every_trial_count(job, tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    api.submit(Storage(url), nb201_spec())
    rows = json.loads(nas("--db", url, "list", "--json").stdout)
    assert rows[0]["trials"] == {"queued": 0, "running": 0, "completed": 0, "failed": 0,
                                 "pruned": 0}
    rows = json.loads(nas("--db", job["url"], "list", "--json").stdout)
    assert rows[0]["trials"] == {"queued": 0, "running": 0, "completed": 20, "failed": 0,
                                 "pruned": 0}


# ---- item 15h: cancel --json --------------------------------------------------------------------
def test_cancel_json(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    job_id = api.submit(Storage(url), nb201_spec())
    data = json.loads(nas("--db", url, "cancel", str(job_id), "--json").stdout)
    assert data == {"job": job_id, "status": "cancelled"}


# ---- item 15f: control characters never reach the terminal raw -------------------------------
EVIL = "evil\x1b]0;owned\x07\x1b[2J\x1b[31m\u202e\r"


def test_a_job_name_with_control_characters_is_refused_at_submit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(nb201_spec(name="job\x1b[31m")))
    result = nas("--db", f"sqlite:///{tmp_path / 'nas.db'}", "submit", str(spec), "--wait",
                 code=2)
    assert "'name'" in result.stderr and "control" in result.stderr
    assert "\x1b" not in result.stderr
    assert not (tmp_path / "nas.db").exists()


def test_user_strings_are_printed_with_control_characters_escaped(job, tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)  # a job stored by an older nas, or written to the database directly
    job_id = storage.jobs.create(parse_spec(nb201_spec()).to_dict(), EVIL, 0)
    storage.jobs.set_status(job_id, "failed", error=f"boom {EVIL}", note=f"note {EVIL}")
    storage.close()
    outputs = [nas("--db", url, "status", str(job_id)), nas("--db", url, "list"),
               nas("--db", job["url"], "best", job["job"], "--device", EVIL, code=2),
               nas("--db", url, "status", EVIL, code=2)]
    for result in outputs:
        for stream in (result.stdout, result.stderr):
            assert not any(c in stream for c in "\x1b\x07\r\u202e"), repr(stream)
    assert "evil\\x1b]0;owned\\x07" in outputs[0].stdout
    assert "boom evil\\x1b" in outputs[0].stdout and "note evil\\x1b" in outputs[0].stdout
    assert "evil\\x1b" in outputs[2].stderr


def test_nas_evaluators_describes_each_in_one_line():
    rows = json.loads(nas("evaluators", "--json").stdout)
    assert {r["name"] for r in rows} >= {"analytic", "benchmark", "function", "proxy", "train"}
    for row in rows:
        assert row["description"] and "\n" not in row["description"], row
        assert not row["description"].startswith(("`", "Metrics")), row  # not a docstring cut
