"""User strings the database cannot hold, and specs too big to echo (issue 17 item 15c, d, g):
SQLite and PostgreSQL refuse the same things, with one short line, and a bad value reported
by an evaluator fails its trial, not the job. Real `nas` commands on both databases."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from nas import api
from nas.cli import app
from nas.storage import Storage, get_trial
from nas.storage.schema import measurements
from tests.conftest import ROOT, nb201_spec

runner = CliRunner()
LONG_DEVICE = "d" * (measurements.c.device.type.length + 1)
LONG_METRIC = "m" * (measurements.c.metric.type.length + 1)


def one_line_error(result: Any, *mentions: str) -> str:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in mentions:
        assert text in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


def latency_table(folder: Path, device: str) -> Path:
    """The HW-NAS-Bench pixel3 latencies, plus a copy of them under `device`."""
    source = ROOT / "workers" / "data" / "hw-nas-bench-cifar10.csv.gz"
    with gzip.open(source, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    path = folder / "latency.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arch", "pixel3_latency_ms", f"{device}_latency_ms"])
        for row in rows:
            writer.writerow([row["arch"], row["pixel3_latency_ms"], row["pixel3_latency_ms"]])
    return path


def submit(url: str, folder: Path, spec: dict[str, Any] | str) -> Any:
    path = folder / "spec.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    return runner.invoke(app, ["--db", url, "submit", str(path), "--wait"])


def job_count(url: str) -> int:
    storage = Storage(url)
    try:
        return len(storage.jobs.all())
    finally:
        storage.close()


# ---- 15c: NUL bytes and names longer than their columns ------------------------------------
SPEC_CASES = [
    pytest.param({"name": "a\x00b"}, ["'name'", "NUL"], id="nul-in-name"),
    pytest.param({"strategy_args": {"population": 10, "sample": 3, "x\x00": 1}},
                 ["strategy_args", "NUL"], id="nul-in-a-key"),
    pytest.param({"evaluator_args": {"table": "nb201-cifar10\x00"}},
                 ["evaluator_args.table", "NUL"], id="nul-in-a-value"),
    pytest.param({"objectives": [{"metric": "valid_acc", "mode": "max"},
                                 {"metric": LONG_METRIC, "mode": "min"}]},
                 ["objectives[1].metric", "at most 64"], id="metric-too-long"),
    pytest.param({"constraints": [{"metric": "latency_ms", "device": LONG_DEVICE, "max": 9}]},
                 ["constraints[0].device", "at most 200"], id="device-too-long"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("changes", "mentions"), SPEC_CASES)
def test_spec_strings_the_database_cannot_hold_are_refused(changes, mentions, db_url, tmp_path):
    spec = nb201_spec(**changes)
    if "constraints" in changes:
        spec["evaluator_args"]["latency_table"] = str(latency_table(tmp_path, LONG_DEVICE))
    one_line_error(submit(db_url, tmp_path, spec), *mentions)
    assert job_count(db_url) == 0


@pytest.mark.integration
def test_a_device_name_too_long_from_the_evaluator_fails_trials_not_the_job(db_url, tmp_path):
    spec = nb201_spec(budget={"trials": 6}, evaluator_args={
        "table": "nb201-cifar10", "latency_table": str(latency_table(tmp_path, LONG_DEVICE))})
    result = submit(db_url, tmp_path, spec)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    storage = Storage(db_url)
    try:
        job = storage.jobs.get(1)
        rows = [get_trial(storage, 1, r.number) for r in storage.trials.load(1)]
    finally:
        storage.close()
    assert job.error is None or "trial" in job.error, job.error
    assert rows and all(r["status"] == "failed" for r in rows), rows
    assert all("at most 200" in r["error"] for r in rows), rows[0]["error"]


@pytest.mark.integration
@pytest.mark.parametrize(("device", "csv_text", "mentions"), [
    pytest.param(LONG_DEVICE, None, ["--device", "200"], id="device-too-long"),
    pytest.param("my\x00phone", None, ["--device", "NUL"], id="nul-in-device"),
    pytest.param("myphone", f"arch,{LONG_METRIC}\n{{key}},1.5\n", ["--metric", "64"],
                 id="metric-too-long"),
    pytest.param("myphone", "arch,latency_ms\n{key},1\x00.5\n", ["line 2"], id="nul-in-value"),
    pytest.param("myphone", "arch,latency_ms\n{key}\x00,1.5\n", ["line 2"], id="nul-in-arch"),
])
def test_latency_import_refuses_what_the_database_cannot_hold(device, csv_text, mentions,
                                                              db_url, tmp_path):
    key = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|" \
          "nor_conv_3x3~2|"
    path = tmp_path / "phone.csv"
    path.write_text((csv_text or "arch,latency_ms\n{key},1.5\n").format(key=key))
    metric = ["--metric", LONG_METRIC] if LONG_METRIC in (csv_text or "") else []
    result = runner.invoke(app, ["--db", db_url, "latency", "import", "--device", device,
                                 *metric, str(path)])
    one_line_error(result, *mentions)


# ---- 15d: a YAML alias bomb, and long values echoed ------------------------------------------
BOMB = "\n".join(["a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)}]" for i in range(8)]) + "\nspace: *i\n"


def test_an_alias_bomb_is_refused_in_one_short_line(sqlite_url, tmp_path):
    line = one_line_error(submit(sqlite_url, tmp_path, BOMB), "spec.yaml", "alias")
    assert len(line) < 300


@pytest.mark.parametrize("spec", [
    pytest.param(nb201_spec(space="x" * 100_000), id="long-space"),
    pytest.param(nb201_spec(budget={"trials": ["x" * 1000] * 1000}), id="big-budget"),
    pytest.param(nb201_spec(evaluator="e" * 100_000), id="long-evaluator"),
    pytest.param(nb201_spec(space_args={"channels": "x" * 100_000}), id="long-space-arg"),
    pytest.param(nb201_spec(strategy_args={"population": "x" * 100_000}),
                 id="long-strategy-arg"),
    pytest.param(nb201_spec(evaluator_args={"table": "x" * 10_000}), id="long-table-path"),
    pytest.param(nb201_spec(space_args={"y" * 5000: 1}), id="long-unknown-arg"),
    pytest.param({**nb201_spec(), "z" * 5000: 1}, id="long-unknown-field"),
])
def test_a_long_bad_value_is_echoed_short(spec, sqlite_url, tmp_path):
    line = one_line_error(submit(sqlite_url, tmp_path, spec))
    assert len(line) < 400, line[:500]


# ---- 15g: min above max --------------------------------------------------------------------
def test_a_constraint_with_min_above_max_is_refused(sqlite_url, tmp_path):
    spec = nb201_spec(constraints=[{"metric": "latency_ms", "device": "pixel3",
                                    "min": 20, "max": 10}])
    one_line_error(submit(sqlite_url, tmp_path, spec), "constraints[0]", "min", "max")
    spec["constraints"][0]["min"] = 10
    assert api.submit(Storage(sqlite_url), spec) == 1  # min == max is allowed
