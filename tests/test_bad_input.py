"""Bad specs and bad CLI calls: exit status 2, one clear line on stderr naming what is wrong,
and the database exactly as it was (no job row, no new file)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from nas import api
from nas.storage import Storage, new_owner
from tests.conftest import ROOT, nb201_spec

runner = CliRunner()


# ---- helpers ---------------------------------------------------------------------------------
def dump(db_file: Path) -> dict[str, list[tuple]]:
    """Every row of every table, in a canonical order."""
    with sqlite3.connect(db_file) as conn:
        names = [n for (n,) in conn.execute(
            "select name from sqlite_master where type = 'table' order by name")]
        return {n: sorted(conn.execute(f'select * from "{n}"').fetchall(), key=repr)
                for n in names}


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_one_line_error(result: Any, *mentions: str) -> str:
    """Exit 2, nothing on stdout, exactly one non-empty stderr line that names `mentions`."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for text in mentions:
        assert text.lower() in line.lower(), f"{text!r} not named in: {line}"
    assert result.stdout == "", result.stdout
    return line


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A database with a completed job (1), a pending job (2) and a cancelled job (3)."""
    folder = tmp_path_factory.mktemp("populated")
    url = f"sqlite:///{folder / 'nas.db'}"
    storage = Storage(url)
    done = api.submit(storage, nb201_spec(budget={"trials": 20}))
    api.run(storage, done)
    pending = api.submit(storage, nb201_spec(name="waiting"))
    cancelled = api.submit(storage, nb201_spec(name="stopped"))
    storage.jobs.request_cancel(cancelled)
    storage.close()
    assert (done, pending, cancelled) == (1, 2, 3)
    return {"url": url, "file": folder / "nas.db"}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current folder: a failed command must leave it empty (no export, no log)."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("NAS_DB_URL", raising=False)
    return folder


# ---- bad specs -------------------------------------------------------------------------------
def spec_with(**changes: Any) -> Callable[[], dict[str, Any]]:
    return lambda: nb201_spec(**changes)


def spec_without(field: str) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        spec = nb201_spec()
        del spec[field]
        return spec
    return make


def spec_text(text: str) -> Callable[[], str]:
    return lambda: text


NO_TABLE = "/nonexistent/folder/table.csv"
LATENCY = {"table": "nb201-cifar10", "latency_table": "hw-nas-bench-cifar10"}

# (spec or raw text, extra CLI args, what the error line must name)
SPEC_CASES = [
    pytest.param(spec_with(colour="red"), [], ["'colour'", "unknown field"],
                 id="unknown-top-level-field"),
    pytest.param(spec_without("space"), [], ["'space'", "required"], id="missing-space"),
    pytest.param(spec_without("evaluator"), [], ["'evaluator'", "required"],
                 id="missing-evaluator"),
    pytest.param(spec_without("objectives"), [], ["'objectives'", "required"],
                 id="missing-objectives"),
    pytest.param(spec_without("budget"), [], ["'budget'", "required"], id="missing-budget"),
    pytest.param(spec_with(space="nb999"), [], ["'space'", "nb999", "nb201"],
                 id="unknown-space"),
    pytest.param(spec_with(strategy="annealing"), [], ["'strategy'", "annealing", "evolution"],
                 id="unknown-strategy"),
    pytest.param(spec_with(evaluator="oracle"), [], ["'evaluator'", "oracle", "benchmark"],
                 id="unknown-evaluator"),
    # module:attr references (a standard module, so that the current folder stays empty)
    pytest.param(spec_with(space="nomodule_xyz:Space"), [],
                 ["'space'", "no module", "nomodule_xyz"], id="reference-missing-module"),
    pytest.param(spec_with(space="json:NoSuchSpace"), [], ["'space'", "json", "NoSuchSpace"],
                 id="reference-missing-attribute"),
    pytest.param(spec_with(space="json:dumps"), [], ["'space'", "json:dumps", "not a SearchSpace"],
                 id="reference-space-of-wrong-kind"),
    pytest.param(spec_with(space="json:"), [], ["'space'", "malformed", "module:attribute"],
                 id="reference-malformed"),
    pytest.param(spec_with(strategy="json:JSONDecoder"), [],
                 ["'strategy'", "json:JSONDecoder", "not a Strategy"],
                 id="reference-strategy-of-wrong-kind"),
    pytest.param(spec_with(strategy="nomodule_xyz:Search"), [], ["'strategy'", "nomodule_xyz"],
                 id="reference-strategy-missing-module"),
    pytest.param(spec_with(evaluator="json:__name__"), [],
                 ["'evaluator'", "json:__name__", "not an Evaluator"],
                 id="reference-evaluator-of-wrong-kind"),
    pytest.param(spec_with(evaluator="json:no_evaluate"), [],
                 ["'evaluator'", "json", "no_evaluate"], id="reference-evaluator-missing-attr"),
    pytest.param(spec_with(evaluator="proxy",
                           evaluator_args={"proxies": ["synflow", "nomodule_xyz:score"]}), [],
                 ["'evaluator_args.proxies[1]'", "nomodule_xyz"],
                 id="reference-proxy-missing-module"),
    pytest.param(spec_with(evaluator="proxy", evaluator_args={"proxies": ["json:JSONDecoder"]}),
                 [], ["'evaluator_args.proxies[0]'", "must be a function"],
                 id="reference-proxy-of-wrong-kind"),
    pytest.param(spec_with(space_args={"channels": -1}), [], ["space_args.channels", "-1"],
                 id="space-args-negative-channels"),
    pytest.param(spec_with(space_args={"depth": 3}), [], ["space_args.depth", "unknown"],
                 id="space-args-unknown-arg"),
    pytest.param(spec_with(strategy_args={"population": 0}), [],
                 ["strategy_args.population", "0"], id="population-0"),
    pytest.param(spec_with(strategy_args={"population": 3, "sample": 5}), [],
                 ["strategy_args.sample", "5", "3"], id="sample-over-population"),
    pytest.param(spec_with(strategy_args={"temperature": 0.5}), [],
                 ["strategy_args.temperature", "unknown"], id="strategy-args-unknown-arg"),
    pytest.param(spec_with(evaluator_args={"table": NO_TABLE}), [],
                 ["evaluator_args", NO_TABLE], id="table-path-does-not-exist"),
    pytest.param(spec_with(evaluator_args={"table": "nb201-cifar10", "delay_s": -1}), [],
                 ["evaluator_args.delay_s", "-1"], id="negative-delay"),
    pytest.param(spec_with(objectives=[{"metric": "accuracy", "mode": "max"}]), [],
                 ["objectives[0].metric", "accuracy", "valid_acc"],
                 id="objective-metric-not-in-table"),
    pytest.param(spec_with(objectives=[{"metric": "valid_acc", "mode": "maximize"}]), [],
                 ["objectives[0].mode", "maximize"], id="objective-mode-maximize"),
    pytest.param(spec_with(objectives=[]), [], ["'objectives'"], id="objectives-empty"),
    pytest.param(spec_with(constraints=[{"metric": "latency_ms", "device": "tpu-v9",
                                         "max": 5}]), [],
                 ["constraints[0].device", "tpu-v9", "pixel3"], id="constraint-device-unknown"),
    pytest.param(spec_with(evaluator_args={"table": "nb201-cifar10"},
                           constraints=[{"metric": "latency_ms", "device": "pixel3",
                                         "max": 5}]), [],
                 ["constraints[0].device", "latency_table"], id="constraint-without-latencies"),
    pytest.param(spec_with(evaluator_args=LATENCY,
                           constraints=[{"metric": "latency_ms", "device": "pixel3"}]), [],
                 ["constraints[0]", "max", "min"], id="constraint-without-bound"),
    pytest.param(spec_with(constraints=[{"metric": "latency_ms", "device": "pixel3",
                                         "limit": 5}]), [],
                 ["constraints[0].limit", "unknown"], id="constraint-unknown-key"),
    pytest.param(spec_with(budget={"trials": 0}), [], ["budget.trials", "0"],
                 id="budget-trials-0"),
    pytest.param(spec_with(budget={"trials": -5}), [], ["budget.trials", "-5"],
                 id="budget-trials-negative"),
    pytest.param(spec_with(budget={"trials": "ten"}), [], ["budget.trials", "ten"],
                 id="budget-trials-string"),
    pytest.param(spec_with(budget={"seconds": 0}), [], ["budget.seconds", "0"],
                 id="budget-seconds-0"),
    pytest.param(spec_with(budget={"epochs": 3}), [], ["budget.epochs", "unknown"],
                 id="budget-unknown-key"),
    pytest.param(spec_with(parallelism=0), [], ["'parallelism'", "0"], id="parallelism-0"),
    pytest.param(spec_with(batch_size=0), [], ["'batch_size'", "0"], id="batch-size-0"),
    pytest.param(spec_with(max_attempts=0), [], ["'max_attempts'"], id="max-attempts-0"),
    pytest.param(spec_with(objectives=[{"metric": "latency_ms", "device": "iphone"}]), [],
                 ["objectives[0].device", "iphone", "edgegpu"], id="objective-unknown-device"),
    pytest.param(spec_with(keep_weights=-1), [], ["'keep_weights'", "-1"],
                 id="keep-weights-negative"),
    pytest.param(spec_with(evaluator="train", evaluator_args={"dataset": "imagenet"},
                           space_args={"input_channels": 1, "input_size": 8},
                           objectives=[{"metric": "val_acc", "mode": "max"}]),
                 [], ["evaluator_args.dataset", "imagenet"], id="train-unknown-dataset"),
    pytest.param(spec_with(evaluator="train", evaluator_args={"dataset": "digits"},
                           objectives=[{"metric": "val_acc", "mode": "max"}]),
                 [], ["spec field 'space_args'", "expects inputs (3, 32, 32)",
                      "input_channels: 1, input_size: 8"],
                 id="train-input-shape-mismatch"),
    pytest.param(spec_with(evaluator="train", evaluator_args={"dataset": "digits"},
                           space_args={"input_channels": 1, "input_size": 8},
                           objectives=[{"metric": "test_acc", "mode": "max"}]),
                 [], ["objectives[0].metric", "test_acc", "val_acc"],
                 id="train-test-acc-without-a-test-split"),
    pytest.param(spec_with(evaluator="train", evaluator_args={"dataset": "digits"},
                           space_args={"input_channels": 1, "input_size": 8, "num_classes": 5},
                           objectives=[{"metric": "val_acc", "mode": "max"}]),
                 [], ["spec field 'space_args.num_classes'", "10 classes",
                      "space_args.num_classes: 10"],
                 id="train-labels-beyond-num-classes"),
    pytest.param(spec_with(evaluator="train", evaluator_args={"epochs": 0},
                           space_args={"input_channels": 1, "input_size": 8},
                           objectives=[{"metric": "val_acc", "mode": "max"}]),
                 [], ["evaluator_args.epochs", "positive integer"], id="train-epochs-0"),
    pytest.param(spec_with(evaluator="train", evaluator_args={"device": "tpu"},
                           space_args={"input_channels": 1, "input_size": 8},
                           objectives=[{"metric": "val_acc", "mode": "max"}]),
                 [], ["evaluator_args.device", "tpu", "cuda:N"], id="train-device-tpu"),
    # a component names its own argument; the spec adds the section (issue 21)
    pytest.param(spec_with(strategy="oneshot", strategy_args={}), [],
                 ["spec field 'space'", "oneshot", "mbconv, hybrid", "'nb201'"],
                 id="weight-sharing-on-an-unsupported-space"),
    pytest.param(spec_with(strategy="darts", strategy_args={"dataset": {"kind": "mnist"}}), [],
                 ["spec field 'strategy_args.dataset.kind'", "mnist"],
                 id="darts-dataset-kind"),
    pytest.param(spec_with(strategy="darts", strategy_args={"temprature": 1}), [],
                 ["spec field 'strategy_args.temprature'", "unknown field"],
                 id="darts-unknown-arg"),
    pytest.param(spec_with(strategy_args={"seed": 3}), [],
                 ["spec field 'strategy_args.seed'", "top-level 'seed'"],
                 id="strategy-args-seed"),
    pytest.param(spec_with(evaluator_args={"table": 7}), [],
                 ["spec field 'evaluator_args.table'", "got 7"], id="benchmark-table-not-a-name"),
    pytest.param(spec_with(executor="kubernetes"), [], ["'executor'", "kubernetes"],
                 id="executor-kubernetes"),
    pytest.param(spec_with(seed=-1), [], ["'seed'", "-1"], id="seed-negative"),
    pytest.param(spec_with(seed=2**64), [], ["'seed'", str(2**64)], id="seed-too-large"),
    pytest.param(spec_with(name="x" * 201), [], ["'name'", "200"], id="name-too-long"),
    pytest.param(spec_text("space: nb201\nstrategy: [evolution\n"), [],
                 ["spec.yaml", "not valid YAML", "line"], id="yaml-syntax-error"),
    pytest.param(spec_text(""), [], ["spec.yaml", "empty"], id="empty-file"),
    pytest.param(spec_text("# only a comment\n"), [], ["spec.yaml", "empty"],
                 id="only-a-comment"),
    pytest.param(spec_text("- space: nb201\n- strategy: evolution\n"), [],
                 ["mapping", "list"], id="spec-is-a-list"),
    pytest.param(spec_text("nb201\n"), [], ["mapping", "str"], id="spec-is-a-string"),
    pytest.param(None, [], ["spec.yaml", "does not exist"], id="missing-spec-file"),
    pytest.param("folder", [], ["spec.yaml", "cannot be read"], id="spec-is-a-folder"),
    pytest.param(spec_with(), ["--set", "seed"], ["--set", "'seed'", "KEY=VALUE"],
                 id="set-without-equals"),
    pytest.param(spec_with(), ["--set", "=3"], ["--set", "KEY=VALUE"], id="set-without-key"),
    pytest.param(spec_with(), ["--set", "space.channels=8"], ["--set", "'space'", "mapping"],
                 id="set-into-a-non-mapping"),
    pytest.param(spec_with(), ["--set", "seed=[1"], ["--set", "YAML"], id="set-bad-yaml"),
    pytest.param(spec_with(), ["--set", "budget.trials=0"], ["budget.trials"],
                 id="set-makes-it-invalid"),
    pytest.param(spec_with(), ["--set", "strategy_args.population=-2"],
                 ["strategy_args.population", "-2"], id="set-bad-strategy-arg"),
]


def _write(folder: Path, case: Any) -> Path:
    path = folder / "spec.yaml"
    if case == "folder":
        path.mkdir()
    elif case is not None:
        made = case()
        path.write_text(made if isinstance(made, str) else yaml.safe_dump(made))
    return path


@pytest.mark.integration
@pytest.mark.parametrize(("case", "extra", "mentions"), SPEC_CASES)
@pytest.mark.parametrize("wait", [False, True], ids=["detached", "wait"])
def test_bad_spec_is_refused_and_nothing_is_written(case, extra, mentions, wait, populated,
                                                    workdir, tmp_path):
    from nas.cli import app

    specs = tmp_path / "specs"
    specs.mkdir()
    spec = _write(specs, case)
    before = dump(populated["file"])
    args = ["submit", str(spec), *extra, *(["--wait"] if wait else [])]

    result = runner.invoke(app, ["--db", populated["url"], *args])
    assert_one_line_error(result, *mentions)
    assert dump(populated["file"]) == before
    assert files_under(workdir) == set()  # no driver log folder

    fresh = tmp_path / "fresh.db"
    result = runner.invoke(app, ["--db", f"sqlite:///{fresh}", *args])
    assert_one_line_error(result, *mentions)
    assert not fresh.exists()  # validated before the database is touched: no file, no job row


# ---- bad CLI calls -----------------------------------------------------------------------------
# {db}: the populated database URL; {missing}: a SQLite file that does not exist; {folder}: an
# existing folder. Calls that name their own --db do not get the populated one.
CLI_CASES = [
    pytest.param(["status", "99"], ["99"], id="status-unknown-job"),
    pytest.param(["status", "0"], ["JOB", "0"], id="status-job-0"),
    pytest.param(["status", "99999999999999999999"], ["JOB", "99999999999999999999"],
                 id="status-job-overflow"),
    pytest.param(["status", "one"], ["'job'", "integer"], id="status-job-not-a-number"),
    pytest.param(["status"], ["missing argument", "job"], id="status-missing-job"),
    pytest.param(["best", "99"], ["99"], id="best-unknown-job"),
    pytest.param(["best", "1", "--max-latency-ms", "18"], ["--max-latency-ms", "--device"],
                 id="max-latency-without-device"),
    pytest.param(["best", "1", "--device", "pixel3", "--max-latency-ms", "-3"],
                 ["--max-latency-ms", "-3"], id="max-latency-negative"),
    pytest.param(["best", "1", "--device", "pixel3", "--max-latency-ms", "0"],
                 ["--max-latency-ms", "0"], id="max-latency-zero"),
    pytest.param(["best", "1", "--device", "pixel3", "--max-latency-ms", "nan"],
                 ["--max-latency-ms", "nan"], id="max-latency-nan"),
    pytest.param(["best", "1", "--top", "0"], ["--top", "0"], id="top-0"),
    pytest.param(["best", "1", "--top", "-4"], ["--top", "-4"], id="top-negative"),
    pytest.param(["best", "1", "--top", "many"], ["--top", "integer"], id="top-not-a-number"),
    pytest.param(["pareto", "99", "--device", "pixel3"], ["99"], id="pareto-unknown-job"),
    pytest.param(["pareto", "1"], ["--device"], id="pareto-without-device"),
    pytest.param(["pareto", "1", "--device", "tpu-v9"], ["tpu-v9"], id="pareto-unknown-device"),
    pytest.param(["pareto", "2", "--device", "pixel3"], ["job 2", "pixel3"],
                 id="pareto-of-a-job-without-trials"),
    pytest.param(["pareto", "1", "--device", "pixel3", "--plot", "nofolder/front.png"],
                 ["--plot", "nofolder"], id="plot-into-missing-folder"),
    pytest.param(["pareto", "1", "--device", "pixel3", "--plot", "front.pdf"],
                 ["--plot", "front.pdf"], id="plot-not-png"),
    pytest.param(["export", "99", "--best", "-o", "out.json"], ["99"], id="export-unknown-job"),
    pytest.param(["export", "1", "--best", "--format", "pdf", "-o", "out.pdf"],
                 ["--format", "pdf", "onnx"], id="export-format-pdf"),
    pytest.param(["export", "1", "--best", "--trial", "1", "-o", "out.json"],
                 ["--trial", "--best"], id="export-trial-and-best"),
    pytest.param(["export", "1", "-o", "out.json"], ["--trial", "--best"],
                 id="export-neither-trial-nor-best"),
    pytest.param(["export", "1", "--best"], ["-o"], id="export-without-output"),
    pytest.param(["export", "1", "--best", "-o", "nofolder/out.json"], ["-o", "nofolder"],
                 id="export-into-missing-folder"),
    pytest.param(["export", "1", "--best", "-o", "{folder}"], ["-o", "folder"],
                 id="export-onto-a-folder"),
    pytest.param(["export", "1", "--trial", "999", "-o", "out.json"], ["999"],
                 id="export-unknown-trial"),
    pytest.param(["export", "1", "--trial", "-1", "-o", "out.json"], ["--trial", "-1"],
                 id="export-negative-trial"),
    pytest.param(["export", "2", "--best", "-o", "out.json"], ["job 2", "no completed trial"],
                 id="export-job-without-trials"),
    pytest.param(["cancel", "1"], ["job 1", "completed"], id="cancel-completed-job"),
    pytest.param(["cancel", "3"], ["job 3", "cancelled"], id="cancel-cancelled-job"),
    pytest.param(["cancel", "99"], ["99"], id="cancel-unknown-job"),
    pytest.param(["resume", "1"], ["job 1", "completed"], id="resume-completed-job"),
    pytest.param(["resume", "1", "--wait"], ["job 1", "completed"],
                 id="resume-wait-completed-job"),
    pytest.param(["resume", "99"], ["99"], id="resume-unknown-job"),
    pytest.param(["--db", "nonsense", "list"], ["--db", "nonsense"], id="db-not-a-url"),
    pytest.param(["--db", "mysql://x", "list"], ["--db", "mysql"], id="db-mysql"),
    pytest.param(["--db", "sqlite:////nonexistent/folder/nas.db", "list"],
                 ["--db", "/nonexistent/folder"], id="db-sqlite-folder-missing"),
    pytest.param(["--db", "sqlite:///{folder}", "list"], ["--db"], id="db-sqlite-on-a-folder"),
    pytest.param(["--db", "postgresql://u@localhost:port/db", "list"], ["--db"],
                 id="db-postgres-bad-port"),
    pytest.param(["--db", "postgresql://nobody@127.0.0.1:1/nas", "list"],
                 ["--db", "cannot connect"], id="db-postgres-unreachable"),
    pytest.param(["--db", "sqlite:///{missing}", "status", "1"], ["--db", "does not exist"],
                 id="status-in-a-missing-sqlite-file"),
    pytest.param(["--db", "sqlite:///{missing}", "export", "1", "--best", "-o", "out.json"],
                 ["--db", "does not exist"], id="export-from-a-missing-sqlite-file"),
    pytest.param(["--db", "nonsense", "submit", str(ROOT / "examples" / "nb201-evolution.yaml")],
                 ["--db", "nonsense"], id="submit-valid-spec-to-a-bad-db"),
    pytest.param(["submit"], ["missing argument", "spec"], id="submit-without-spec"),
    pytest.param(["frobnicate"], ["frobnicate"], id="unknown-command"),
    pytest.param(["serve", "--poll-s", "0"], ["--poll-s", "0"], id="serve-poll-zero"),
    pytest.param(["serve", "--lease-ttl-s", "0.5"], ["--lease-ttl-s"], id="serve-short-lease"),
    pytest.param(["serve", "--max-jobs", "0"], ["--max-jobs"], id="serve-no-jobs"),
    pytest.param(["serve", "--name", "a\x1b[2Jb"], ["--name", "control characters"],
                 id="serve-name-with-escape-codes"),
    pytest.param(["db", "downgrade"], ["downgrade"], id="unknown-db-command"),
    pytest.param(["status", "1", "--jsn"], ["--jsn"], id="unknown-option"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("args", "mentions"), CLI_CASES)
def test_bad_call_is_refused_and_nothing_changes(args, mentions, populated, workdir, tmp_path):
    from nas.cli import app

    folder = tmp_path / "a-folder"
    folder.mkdir()
    missing = tmp_path / "missing.db"
    places = {"folder": str(folder), "missing": str(missing)}
    args = [a.format(**places) for a in args]
    if args[0] != "--db":
        args = ["--db", populated["url"], *args]
    before = dump(populated["file"])

    result = runner.invoke(app, args)
    assert_one_line_error(result, *[m.format(**places) for m in mentions])
    assert dump(populated["file"]) == before
    assert files_under(workdir) == set()
    assert not missing.exists()
    assert files_under(folder) == set()


def test_resume_of_a_job_a_live_driver_runs_is_refused(tmp_path, workdir):
    from nas.cli import app

    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    job = api.submit(storage, nb201_spec())
    storage.jobs.acquire_lease(job, new_owner(), ttl_s=300)  # a live driver (this process)
    before = dump(tmp_path / "nas.db")
    for wait in ([], ["--wait"]):
        result = runner.invoke(app, ["--db", url, "resume", str(job), *wait])
        assert_one_line_error(result, f"job {job}", "refusing to run it twice")
        assert dump(tmp_path / "nas.db") == before
    assert files_under(workdir) == set()


@pytest.mark.parametrize(("retry", "mentions"), [
    pytest.param("soon", ["NAS_DB_RETRY_S", "soon"], id="retry-window-not-a-number"),
    pytest.param("-5", ["NAS_DB_RETRY_S", "-5"], id="retry-window-negative"),
    pytest.param("nan", ["NAS_DB_RETRY_S", "nan"], id="retry-window-nan"),
])
def test_bad_retry_window_is_refused(retry, mentions, populated, workdir):
    from nas.cli import app

    before = dump(populated["file"])
    spec = str(ROOT / "examples" / "nb201-evolution.yaml")
    result = runner.invoke(app, ["--db", populated["url"], "submit", spec],
                           env={"NAS_DB_RETRY_S": retry})
    assert_one_line_error(result, *mentions)
    assert dump(populated["file"]) == before
    assert files_under(workdir) == set()


def _pg_tables(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        names = inspect(conn).get_table_names()
        counts = {n: conn.execute(text(f'select count(*) from "{n}"')).scalar_one()
                  for n in names}
    engine.dispose()
    return counts


@pytest.mark.parametrize(("case", "extra", "mentions"), [
    pytest.param("budget", {"budget": {"trials": 0}}, ["budget.trials"], id="pg-bad-budget"),
    pytest.param("space", {"space": "nb999"}, ["space", "nb999"], id="pg-unknown-space"),
])
def test_bad_spec_leaves_a_postgres_database_as_it_was(case, extra, mentions, pg_url, workdir):
    from nas.cli import app

    storage = Storage(pg_url)
    api.submit(storage, nb201_spec())
    storage.close()
    before = _pg_tables(pg_url)
    spec = workdir.parent / f"{case}.yaml"
    spec.write_text(yaml.safe_dump(nb201_spec(**extra)))
    result = runner.invoke(app, ["--db", pg_url, "submit", str(spec)])
    assert_one_line_error(result, *mentions)
    assert _pg_tables(pg_url) == before


@pytest.mark.parametrize(("url", "mentions"), [
    pytest.param("postgresql://postgres@127.0.0.1:5432/nas_no_such_database",
                 ["cannot connect", "nas_no_such_database"], id="pg-database-missing"),
    pytest.param("postgresql://nas_no_such_role@127.0.0.1:5432/postgres",
                 ["cannot connect", "nas_no_such_role"], id="pg-role-missing"),
])
def test_bad_postgres_url_is_one_line(url, mentions, pg_available, workdir):
    from nas.cli import app

    result = runner.invoke(app, ["--db", url, "list"])
    assert_one_line_error(result, *mentions)
    assert files_under(workdir) == set()


@pytest.mark.integration
@pytest.mark.parametrize(("args", "mentions"), [
    pytest.param(["submit", "{spec}"], ["budget.trials"], id="bad-spec"),
    pytest.param(["best", "1", "--top", "x"], ["--top"], id="usage-error"),
    pytest.param(["--db", "mysql://x", "status", "1"], ["--db", "mysql"], id="bad-db"),
    pytest.param(["status", "7"], ["no job 7"], id="unknown-job"),
])
def test_one_line_errors_from_a_real_process(args, mentions, populated, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(nb201_spec(budget={"trials": -1})))
    args = [a.format(spec=spec) for a in args]
    if args[0] != "--db":
        args = ["--db", populated["url"], *args]
    before = dump(populated["file"])
    proc = subprocess.run([sys.executable, "-m", "nas", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "40"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert all(m.lower() in lines[0].lower() for m in mentions), lines[0]
    assert proc.stdout == ""
    assert dump(populated["file"]) == before
    assert files_under(tmp_path) == {"spec.yaml"}
