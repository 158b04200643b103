"""Damaged SQLite files and failing export writes (issue 17 item 15a, b, e): one line on
stderr and a non-zero exit, never a traceback, and the file left exactly as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nas import api
from nas.cli import app
from nas.storage import Storage
from tests.conftest import ROOT, nb201_spec

runner = CliRunner()


@pytest.fixture(scope="module")
def good_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a SQLite database holding a completed 20-trial job."""
    path = tmp_path_factory.mktemp("good") / "nas.db"
    storage = Storage(f"sqlite:///{path}")
    api.run(storage, api.submit(storage, nb201_spec(budget={"trials": 20})))
    storage.close()
    return path.read_bytes()


def damaged(kind: str, good: bytes) -> bytes:
    if kind == "garbage":
        return bytes(range(256)) * 40
    if kind == "text":
        return b"name: not a database\n"
    return good[: len(good) // 3]  # truncated: a valid header, pages missing


COMMANDS = [["list"], ["status", "1"], ["best", "1"], ["pareto", "1", "--device", "pixel3"],
            ["export", "1", "--best", "-o", "out.json"], ["cancel", "1"], ["submit", "{spec}"],
            ["latency", "import", "--device", "myphone", "{csv}"], ["db", "upgrade"]]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["garbage", "text", "truncated"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_a_damaged_sqlite_file_is_one_line_and_left_untouched(kind, command, good_db, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "nas.db"
    content = damaged(kind, good_db)
    path.write_bytes(content)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(nb201_spec()))
    key = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|" \
          "nor_conv_3x3~2|"
    (tmp_path / "phone.csv").write_text(f"arch,latency_ms\n{key},1.5\n")
    args = [a.format(spec=spec, csv=tmp_path / "phone.csv") for a in command]
    result = runner.invoke(app, ["--db", f"sqlite:///{path}", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: database {str(path)!r} is not a valid SQLite database"), \
        lines[0]
    assert path.read_bytes() == content
    assert not (tmp_path / "out.json").exists()


@pytest.mark.integration
def test_a_damaged_sqlite_file_from_a_real_process(good_db, tmp_path):
    path = tmp_path / "nas.db"
    path.write_bytes(damaged("truncated", good_db))
    proc = subprocess.run([sys.executable, "-m", "nas", "--db", f"sqlite:///{path}", "status",
                           "1"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---- 15b: export write errors ---------------------------------------------------------------
@pytest.fixture(scope="module")
def job_url(good_db, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("job") / "nas.db"
    path.write_bytes(good_db)
    return f"sqlite:///{path}"


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["json", "onnx", "torchscript"])
@pytest.mark.parametrize("where", ["read-only-folder", "chmod-555-folder", "missing-folder",
                                   "a-folder", "parent-is-a-file"])
def test_export_write_errors_are_one_line(fmt, where, job_url, tmp_path):
    if where == "chmod-555-folder" and os.geteuid() == 0:
        pytest.skip("root writes into a chmod 555 folder")
    folder = tmp_path / "out"
    folder.mkdir()
    targets = {"read-only-folder": Path("/proc") / "best.out",  # not even root writes there
               "chmod-555-folder": folder / "best.out", "missing-folder": folder / "no" / "x",
               "a-folder": folder, "parent-is-a-file": tmp_path / "spec.yaml" / "best.out"}
    (tmp_path / "spec.yaml").write_text("x")
    folder.chmod(0o555 if where == "chmod-555-folder" else 0o755)
    try:
        result = runner.invoke(app, ["--db", job_url, "export", "1", "--best", "--format", fmt,
                                     "-o", str(targets[where])])
    finally:
        folder.chmod(0o755)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: -o"), result.stderr
    assert list(folder.iterdir()) == []


def test_plot_write_error_is_one_line(job_url, tmp_path):
    result = runner.invoke(app, ["--db", job_url, "pareto", "1", "--device", "pixel3",
                                 "--plot", "/proc/front.png"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 2 and result.stderr.startswith("error: --plot"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---- 15e: a killed export leaves the file it replaces whole ------------------------------------
KILL_ON_WRITE = """
import os, signal, sys
folder = sys.argv[1]
def writes(flags_or_mode):
    if isinstance(flags_or_mode, str):
        return any(c in flags_or_mode for c in "wax+")
    return isinstance(flags_or_mode, int) and bool(flags_or_mode & (os.O_WRONLY | os.O_RDWR))
def kill(*args):
    os.kill(os.getpid(), signal.SIGKILL)
def hook(event, args):
    # killed just after the export first opened a file of the output folder for writing
    # (audit events come before the call; the profiler's next event comes after it)
    if event == "open" and args and str(args[0]).startswith(folder) and \\
            writes(args[1] if args[1] is not None else args[2]):
        sys.setprofile(kill)
sys.addaudithook(hook)
from nas.cli import main
sys.argv = ["nas", *sys.argv[2:]]
main()
"""


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["json", "onnx", "torchscript"])
def test_a_killed_export_leaves_the_existing_file_whole(fmt, job_url, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / f"best.{fmt}"
    target.write_bytes(b"the previous export\n" * 100)
    proc = subprocess.run([sys.executable, "-c", KILL_ON_WRITE, str(folder), "--db", job_url,
                           "export", "1", "--best", "--format", fmt, "-o", str(target)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])
    assert target.read_bytes() == b"the previous export\n" * 100
