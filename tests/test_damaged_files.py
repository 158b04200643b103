"""Damaged SQLite files and failing export writes (issue 17 item 15a, b, e): one line on
stderr and a non-zero exit, never a traceback, and the file left exactly as it was."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_a_damaged_sqlite_file_from_a_real_process(good_db, tmp_path):
    path = tmp_path / "nas.db"
    path.write_bytes(damaged("truncated", good_db))
    proc = subprocess.run([sys.executable, "-m", "nas", "--db", f"sqlite:///{path}", "status",
                           "1"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
