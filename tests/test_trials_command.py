"""`nas trials JOB` (filters, sorts, pages, --json, --csv), `nas.storage.trials_page` under
it, `Job.trials(...)`, and what `nas status` says about failures and the best trial.

The trials are written through `Trials.commit_step` as a driver writes them (new trials,
dispatched ones, results with metrics, errors and measurements), over SQLite and
PostgreSQL (`db_url`); one test runs a real small job whose trials fail."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from typing import Any

import pytest
from typer.testing import CliRunner

import nas
from nas import api
from nas.cli import app
from nas.errors import NasError
from nas.storage import NewTrial, ScoredResult, Storage, new_owner, trials_page
from tests.conftest import nb201_spec

runner = CliRunner()
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
T0 = 1_767_000_000.0  # started_at of trial 1 (epoch seconds)
OOM = "RuntimeError: CUDA out of memory\nTraceback (most recent call last):\n  line 3"
BOOM = "ValueError: boom\nTraceback (most recent call last):\n  line 7"

#: number -> (status, valid_acc, pixel3 latency, train_s metric, duration s, error)
TRIALS: dict[int, tuple[str, float | None, float | None, float | None, float, str | None]] = {
    1: ("completed", 70.0, 3.0, 12.0, 10.0, None),
    2: ("completed", 90.0, None, None, 30.0, None),  # the best: no latency, so unknown
    3: ("completed", 80.0, 4.0, 30.0, 5.0, None),
    4: ("completed", 60.0, 9.0, None, 20.0, None),  # slowest device value: infeasible
    5: ("completed", 85.0, 2.0, 8.0, 40.0, None),
    6: ("failed", None, None, None, 1.0, BOOM),
    7: ("failed", None, None, None, 2.0, OOM),
    8: ("failed", None, None, None, 3.0, BOOM),
    9: ("pruned", None, None, None, 4.0, "pruned at step 2"),
    10: ("running", None, None, None, 0.0, None),
    11: ("queued", None, None, None, 0.0, None),
    12: ("completed", None, 1.0, None, 6.0, None),  # no primary objective value: no score
}
SPEC = nb201_spec(objectives=[{"metric": "valid_acc", "mode": "max"},
                              {"metric": "latency_ms", "device": "pixel3", "mode": "min"}],
                  constraints=[{"metric": "latency_ms", "device": "pixel3", "max": 5.0}])


def arch_of(number: int) -> dict[str, Any]:
    return {"ops": [OPS[(number + i) % 5] for i in range(5)] + [OPS[number // 5 % 5]]}


def _result(number: int, trial: tuple, trial_id: int, architecture_id: int,
            sign: float = 1.0) -> ScoredResult | None:
    status, acc, latency, train_s, duration, error = trial
    if status in ("running", "queued"):
        return None
    done = status == "completed"
    metrics = {"valid_acc": acc, **({"train_s": train_s} if train_s is not None else {})}
    feasible = None if latency is None else latency <= 5.0
    measured = [{"device": "pixel3", "metric": "latency_ms", "value": latency,
                 "source": "measured"}] if latency is not None else []
    started = T0 + 100.0 * number
    return ScoredResult(
        trial_id=trial_id, status=status, attempt=1, worker="host:1", started_at=started,
        finished_at=started + duration, metrics=metrics if done else None,
        score=sign * acc if done and acc is not None else None,
        objectives=[acc, latency] if done else None,
        feasible=feasible if done else None, error=error, architecture_id=architecture_id,
        params=1000 * number, flops=10_000 * number, measurements=measured)


def write_job(storage: Storage, spec: dict[str, Any], trials: dict[int, tuple]) -> int:
    """A job whose trials went through the driver's writes: created, dispatched, finished;
    scored as the driver scores them (a minimised primary objective: score = -value)."""
    sign = -1.0 if spec["objectives"][0].get("mode") == "min" else 1.0
    job = storage.jobs.create(spec, spec["name"], seed=0)
    owner = new_owner()
    storage.jobs.acquire_lease(job, owner, ttl_s=60.0)
    created = storage.trials.commit_step(job, owner, "nb201", new_trials=[
        NewTrial(n, "|".join(arch_of(n)["ops"]) + f"#{n}", arch_of(n)) for n in trials])
    results = [r for n, (tid, aid) in created.items()
               if (r := _result(n, trials[n], tid, aid, sign))]
    running = [(tid, 1) for n, (tid, _) in created.items() if trials[n][0] == "running"]
    storage.trials.commit_step(job, owner, "nb201", results=results, dispatched=running)
    storage.jobs.release_leases(owner, job)
    return job


@pytest.fixture
def job(db_url: str) -> dict[str, Any]:
    storage = Storage(db_url)
    return {"url": db_url, "storage": storage, "job": write_job(storage, SPEC, TRIALS)}


def nas_cli(*args: str, code: int = 0) -> Any:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, f"nas {' '.join(args)} -> {result.exit_code}\n" \
                                     f"stdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def trials_json(job: dict[str, Any], *args: str) -> dict[str, Any]:
    return json.loads(nas_cli("--db", job["url"], "trials", str(job["job"]), "--json",
                              *args).stdout)


def numbers(job: dict[str, Any], *args: str) -> list[int]:
    return [r["trial"] for r in trials_json(job, "--limit", "100", *args)["rows"]]


# ---- filters and sorts ----------------------------------------------------------------------
@pytest.mark.integration
def test_each_status_filter_gives_its_trials_and_total(job):
    assert trials_json(job)["total"] == len(TRIALS)
    for status in ("completed", "failed", "pruned", "running", "queued"):
        expected = sorted(n for n, t in TRIALS.items() if t[0] == status)
        data = trials_json(job, "--status", status, "--sort", "number")
        assert data["total"] == len(expected)
        assert [r["trial"] for r in data["rows"]] == expected
        assert {r["status"] for r in data["rows"]} == {status}


@pytest.mark.integration
def test_score_sorts_best_first_with_unscored_trials_last_both_ways(job):
    unscored = [6, 7, 8, 9, 10, 11, 12]
    assert numbers(job) == [2, 5, 3, 1, 4, *unscored]
    assert numbers(job, "--asc") == [4, 1, 3, 5, 2, *unscored]
    assert numbers(job, "--sort", "score", "--desc") == numbers(job)


def test_a_metric_with_missing_values_sorts_them_last(job):
    missing = [2, 4, 6, 7, 8, 9, 10, 11, 12]  # no train_s: by number after the others
    assert numbers(job, "--sort", "train_s") == [3, 1, 5, *missing]
    assert numbers(job, "--sort", "train_s", "--asc") == [5, 1, 3, *missing]


def test_a_minimised_objective_sorts_best_first_by_default(job):
    data = trials_json(job, "--sort", "latency_ms", "--limit", "100")
    assert data["descending"] is False
    assert [r["trial"] for r in data["rows"]][:6] == [12, 5, 1, 3, 4, 2]  # 2: unknown
    assert data["rows"][5]["objectives"] == {"valid_acc": 90.0, "latency_ms": None}


def test_a_minimised_primary_objective_sorts_by_its_value(db_url):
    storage = Storage(db_url)
    spec = {**SPEC, "name": "min", "objectives": [{"metric": "valid_acc", "mode": "min"}],
            "constraints": []}
    job = {"url": db_url, "job": write_job(storage, spec, TRIALS)}
    unscored = [6, 7, 8, 9, 10, 11, 12]
    assert numbers(job, "--sort", "valid_acc") == [4, 1, 3, 5, 2, *unscored]
    assert numbers(job, "--sort", "valid_acc", "--desc") == [2, 5, 3, 1, 4, *unscored]
    assert numbers(job) == [4, 1, 3, 5, 2, *unscored]  # the best score: the lowest value


@pytest.mark.integration
def test_number_and_duration_sorts(job):
    assert numbers(job, "--sort", "number") == list(range(1, 13))
    assert numbers(job, "--sort", "number", "--desc") == list(range(12, 0, -1))
    assert numbers(job, "--sort", "duration")[:10] == [5, 2, 4, 1, 12, 3, 9, 8, 7, 6]
    assert numbers(job, "--sort", "duration", "--asc")[:5] == [6, 7, 8, 9, 3]


@pytest.mark.integration
@pytest.mark.parametrize("order", [["--sort", "train_s"], ["--sort", "score"],
                                   ["--sort", "score", "--asc"], ["--status", "completed"]])
def test_pages_cover_the_order_once_with_a_constant_total(job, order):
    """Pages of 4 and 3 (the score order reads its scored trials, then the others: pages
    across that boundary too)."""
    everything = numbers(job, *order)
    for size in (4, 3):
        pages = [trials_json(job, *order, "--limit", str(size), "--offset", str(offset))
                 for offset in range(0, 13, size)]
        assert {p["total"] for p in pages} == {len(everything)}
        assert [r["trial"] for p in pages for r in p["rows"]] == everything


def test_trials_page_is_the_same_query_for_the_dashboard(job):
    page = trials_page(job["storage"], job["job"], status="completed", sort="valid_acc",
                       limit=2, offset=1)
    assert (page.total, page.sort, page.descending) == (6, "valid_acc", True)
    assert [r["trial"] for r in page.rows] == [5, 3]
    row = page.rows[0]
    assert row["worker"] == "host:1" and row["attempt"] == 1
    assert row["duration_s"] == pytest.approx(40.0)
    assert row["started_at"].timestamp() == pytest.approx(T0 + 500.0)


def test_an_unknown_sort_metric_names_it_and_the_known_ones(job):
    with pytest.raises(NasError) as info:
        trials_page(job["storage"], job["job"], sort="val_acc")
    message = str(info.value)
    assert "'val_acc'" in message
    for known in ("number", "score", "duration", "valid_acc", "latency_ms", "train_s"):
        assert known in message


# ---- output formats -------------------------------------------------------------------------
def test_json_object_shape(job):
    data = trials_json(job, "--status", "failed", "--sort", "number", "--limit", "2")
    assert set(data) == {"job", "objectives", "status", "sort", "descending", "offset",
                         "limit", "total", "rows"}
    assert (data["job"], data["status"], data["total"], data["limit"]) == (job["job"],
                                                                           "failed", 3, 2)
    assert data["objectives"] == ["valid_acc", "latency_ms"]
    first = data["rows"][0]
    assert set(first) == {"trial", "status", "key", "arch", "objectives", "score", "feasible",
                          "metrics", "params", "flops", "attempt", "worker", "started_at",
                          "finished_at", "duration_s", "error"}
    assert first["error"] == BOOM  # the full text
    assert datetime.fromisoformat(first["finished_at"]).timestamp() == pytest.approx(T0 + 601)


def test_csv_has_a_column_per_objective_metric_and_decision(job):
    text = nas_cli("--db", job["url"], "trials", str(job["job"]), "--csv", "--sort", "number",
                   "--limit", "100").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["trial"]) for r in rows] == list(range(1, 13))
    columns = set(rows[0])
    assert {"valid_acc", "latency_ms", "train_s", "error", "key", "duration_s"} <= columns
    assert {f"arch.ops.{i}" for i in range(6)} <= columns
    assert rows[2]["arch.ops.0"] == arch_of(3)["ops"][0]
    assert float(rows[2]["train_s"]) == 30.0 and rows[1]["train_s"] == ""
    assert rows[6]["error"] == OOM  # its newlines survive, quoted


def test_table_shows_the_first_line_of_each_error(job):
    text = nas_cli("--db", job["url"], "trials", str(job["job"]), "--status", "failed").stdout
    assert "error: RuntimeError: CUDA out of memory" in text
    assert text.count("error: ValueError: boom") == 2
    assert "Traceback" not in text
    assert "failed trials 1-3 of 3" in text


def test_table_says_how_to_get_the_next_page(job):
    text = nas_cli("--db", job["url"], "trials", str(job["job"]), "--limit", "4").stdout
    assert "trials 1-4 of 12" in text and "8 more: --offset 4" in text


def test_a_job_without_trials_is_an_empty_page_not_an_error(db_url):
    storage = Storage(db_url)
    job = storage.jobs.create(SPEC, "empty", seed=0)
    args = ("--db", db_url, "trials", str(job))
    assert "no trials" in nas_cli(*args).stdout
    assert json.loads(nas_cli(*args, "--json").stdout)["total"] == 0
    header = nas_cli(*args, "--csv").stdout.splitlines()
    assert len(header) == 1 and header[0].startswith("trial,status,score")
    assert "most common failures" not in nas_cli("--db", db_url, "status", str(job)).stdout


@pytest.mark.parametrize("args, message", [
    (["--status", "done"], "--status must be one of"),
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--offset", "-1"], "--offset must be 0 or more, got -1"),
    (["--json", "--csv"], "give at most one of --json and --csv"),
    (["--sort", "nope"], "has no metric 'nope'"),
    (["--sort", 'a"b'], "has no metric 'a\"b'"),  # not a JSON path: refused, not an error
])
def test_bad_input_is_one_line_and_exit_2(job, args, message):
    result = nas_cli("--db", job["url"], "trials", str(job["job"]), *args, code=2)
    assert result.stdout == ""
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_an_unknown_job_is_one_line_and_exit_2(job):
    result = nas_cli("--db", job["url"], "trials", "999", code=2)
    assert result.stderr.startswith("error: no job 999") and result.stderr.count("\n") == 1


@pytest.mark.integration
def test_job_trials_filters_and_sorts_like_the_command(job):
    handle = nas.Job(job["job"], db=job["url"], storage=job["storage"])
    rows = handle.trials(status="completed", sort="score", limit=2)
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    assert [r["trial"] for r in records] == [2, 5]
    unknown = records[0]["latency_ms"]  # None, or NaN in a DataFrame
    assert (unknown is None or math.isnan(unknown)) and records[1]["latency_ms"] == 2.0
    everything = handle.trials()
    assert len(everything) == len(TRIALS)


# ---- nas status -----------------------------------------------------------------------------
def test_status_counts_the_most_common_failure_reasons(job):
    data = json.loads(nas_cli("--db", job["url"], "status", str(job["job"]), "--json").stdout)
    assert data["failures"] == [{"error": "ValueError: boom", "count": 2},
                                {"error": "RuntimeError: CUDA out of memory", "count": 1}]
    text = nas_cli("--db", job["url"], "status", str(job["job"])).stdout
    assert "2x  ValueError: boom" in text and "1x  RuntimeError: CUDA out of memory" in text


def test_status_notes_a_best_trial_whose_device_value_is_unknown(job):
    data = json.loads(nas_cli("--db", job["url"], "status", str(job["job"]), "--json").stdout)
    assert data["best"]["trial"] == 2
    notes = data["best_notes"]
    assert any("feasible is unknown" in n for n in notes)
    assert any("no latency_ms value on pixel3" in n and "completed trials without one: 1" in n
               for n in notes)
    text = nas_cli("--db", job["url"], "status", str(job["job"])).stdout
    assert "note: best trial 2 has no latency_ms value on pixel3" in text


def test_status_notes_an_infeasible_best_trial(db_url):
    storage = Storage(db_url)
    trials = {1: ("completed", 95.0, 9.0, None, 1.0, None), 2: TRIALS[1]}  # 1: 9 ms > 5
    job = write_job(storage, {**SPEC, "name": "infeasible"}, trials)
    data = json.loads(nas_cli("--db", db_url, "status", str(job), "--json").stdout)
    assert data["best"]["trial"] == 1
    assert data["best_notes"] == ["best trial 1 is infeasible: it violates a constraint of "
                                  "the job"]
    assert data["failures"] == []


@pytest.mark.integration
def test_a_real_job_whose_trials_fail_shows_why(sqlite_url):
    """The `function` evaluator's bad returns (tests/user_functions.py) fail 6 of 8 trials."""
    storage = Storage(sqlite_url)
    spec = nb201_spec(strategy="random", strategy_args={}, evaluator="function",
                      evaluator_args={"function": "tests.user_functions:bad_return"},
                      objectives=[{"metric": "val_acc", "mode": "max"}],
                      budget={"trials": 8}, parallelism=1, batch_size=1)
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    data = json.loads(nas_cli("--db", sqlite_url, "status", str(job), "--json").stdout)
    assert sum(f["count"] for f in data["failures"]) == 6
    assert all("\n" not in f["error"] for f in data["failures"])
    failed = json.loads(nas_cli("--db", sqlite_url, "trials", str(job), "--status", "failed",
                                "--json").stdout)
    assert failed["total"] == 6
    assert {r["error"].splitlines()[0] for r in failed["rows"]} == \
        {f["error"] for f in data["failures"]}


def test_one_cause_over_many_architectures_counts_once(sqlite_url, tmp_path):
    """A benchmark table missing most cells: every failed trial's error names its own
    architecture, yet `nas status` reports the cause once with the count of all of them."""
    import csv
    import gzip
    from importlib import resources

    records = list(csv.DictReader(gzip.decompress(resources.files("workers").joinpath(
        "data", "nb201-cifar10.csv.gz").read_bytes()).decode().splitlines()))
    table = tmp_path / "ten-cells.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records[:10])
    storage = Storage(sqlite_url)
    job = api.submit(storage, nb201_spec(strategy="random", strategy_args={}, budget={"trials": 12},
                                         evaluator_args={"table": str(table)}))
    api.run(storage, job)
    data = json.loads(nas_cli("--db", sqlite_url, "status", str(job), "--json").stdout)
    failed = data["trials"]["failed"]
    assert failed >= 10
    assert data["failures"] == [
        {"error": f"architecture <architecture> is not in table {table}",
         "count": failed}]


@pytest.mark.parametrize("width", [40, 80, 220])
def test_a_page_of_rows_prints_as_rows_added_one_by_one(width):
    """`Table.add_page` (one row of joined columns when every row fits on one line, else row
    by row) prints exactly what adding the rows one by one prints, at any console width:
    a long error folds and keeps its row together, wide characters count double, control
    characters are escaped and an emoji code stays text."""
    from nas.cli import SafeConsole, Table

    rows = [["7", "completed", "91.87", "2-4-2-0-3-2-2-0-1"],
            ["12", "failed", "-", "error: " + "boom :x: " * 6],
            ["1234", "漢字", "0.5", "evil\x1b[2J"]]

    def printed(page: list[list[str]], fast: bool) -> tuple[str, int]:
        buffer = io.StringIO()
        console = SafeConsole(highlight=False, soft_wrap=True, markup=False, width=width,
                              file=buffer)
        table = Table("trial", "status", "score", title="job 1: trials")
        table.add_column("architecture / error", overflow="fold")
        if fast:
            table.add_page(page, console)
        else:
            for row in page:
                table.add_row(*row)
        console.print(table)
        return buffer.getvalue(), table.row_count

    for page in (rows, rows[:1], rows[::2], []):
        assert printed(page, True)[0] == printed(page, False)[0]
    text, joined_rows = printed(rows, True)
    assert joined_rows == (1 if width == 220 else 3)  # 40 and 80 columns: the error folds
    assert ":x:" in text and "\\x1b" in text and "\x1b" not in text
