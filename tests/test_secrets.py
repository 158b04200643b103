"""The database password is never printed nor passed on a command line (issue 17, item 4):
not in an error message (unknown job, a URL that does not parse, a refused connection), not
in `nas serve`'s start-up line, not in `nas status` / `list` / `servers`, and not on the
command line (`ps`) or in the log of a detached driver. Run against a real PostgreSQL role
that has a password (local authentication may be `trust`: the password is then unused, but
it is in the URL all the same)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from typer.testing import CliRunner

from nas.cli import app
from nas.storage import Storage
from tests.conftest import ROOT, _pg_admin_engine, nb201_spec, wait_until

runner = CliRunner()


@pytest.fixture
def secret_url(pg_available: str) -> Iterator[tuple[str, str]]:
    """(URL, password): a database owned by a fresh role that has a password."""
    tag = uuid.uuid4().hex[:10]
    role, database, password = f"nas_role_{tag}", f"nas_secret_{tag}", f"Pw{uuid.uuid4().hex}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(text(f'CREATE DATABASE "{database}" OWNER {role}'))
    host = pg_available.split("@", 1)[1].rsplit("/", 1)[0]
    yield f"postgresql://{role}:{password}@{host}/{database}", password
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
    admin.dispose()


def _nas(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`nas ARGS` in-process: (exit status, stdout + stderr)."""
    result = runner.invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout + result.stderr


def test_mask_url_hides_only_the_password():
    from nas.storage import mask_url

    assert mask_url("postgresql://ann:s3cret@db:5432/nas") == "postgresql://ann:***@db:5432/nas"
    assert mask_url("postgresql+psycopg://ann:s3cret@db/nas") == \
        "postgresql+psycopg://ann:***@db/nas"
    assert mask_url("postgresql://ann@db/nas") == "postgresql://ann@db/nas"
    assert mask_url("sqlite:///nas.db") == "sqlite:///nas.db"
    assert mask_url("sqlite:////tmp/a@b/nas.db") == "sqlite:////tmp/a@b/nas.db"  # as spelled
    assert "s3cret" not in mask_url("postgresql://ann@db/nas?password=s3cret")  # libpq reads it
    # what SQLAlchemy cannot parse is still masked: a bad port, no scheme, odd characters
    for bad in ("postgresql://ann:s3cret@db:notaport/nas", "ann:s3cret@db/nas",
                "postgresql://ann:s3:cr/et@db/nas", "post gres://ann:s3cret@db/nas"):
        assert "s3cret" not in mask_url(bad) and "cr/et" not in mask_url(bad), bad


def test_a_traceback_never_shows_local_variables():
    assert app.pretty_exceptions_show_locals is False  # `url` would hold the password


@pytest.mark.integration
def test_an_unknown_job_names_the_database_without_its_password(secret_url):
    url, password = secret_url
    code, output = _nas("--db", url, "status", "99")
    assert code == 2 and "no job 99" in output
    assert password not in output and url.replace(password, "***") in output
    with pytest.raises(Exception) as caught:
        Storage(url).jobs.get(99)
    assert password not in str(caught.value)


@pytest.mark.integration
@pytest.mark.parametrize("template", [
    "postgresql://ann:{pw}@127.0.0.1:notaport/nas",   # SQLAlchemy cannot parse the port
    "ann:{pw}@127.0.0.1/nas",                         # no scheme
    "mysql://ann:{pw}@127.0.0.1/nas",                 # unsupported database
    "postgresql+nodriver://ann:{pw}@127.0.0.1/nas",   # no such driver
    "postgresql://ann:{pw}@127.0.0.1:1/nas",          # nothing listens there
])
def test_errors_about_a_url_never_echo_its_password(template):
    password = f"Pw{uuid.uuid4().hex}"
    code, output = _nas("--db", template.format(pw=password), "list")
    assert code != 0 and output.startswith("error: "), output
    assert password not in output, output


def _spec_file(folder: Path, **overrides) -> Path:
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(nb201_spec(**overrides), sort_keys=False))
    return path


def _pids_running(job: int, artifacts: Path) -> list[int]:
    """The `nas drive JOB` processes started with this test's NAS_ARTIFACTS."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"drive" in argv and str(job).encode() in argv and \
                f"NAS_ARTIFACTS={artifacts}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


@pytest.mark.system
def test_a_detached_driver_gets_the_url_from_its_environment_not_its_command_line(
        secret_url, tmp_path):
    url, password = secret_url
    artifacts = tmp_path / "artifacts"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NAS_ARTIFACTS": str(artifacts)}
    env.pop("NAS_DB_URL", None)
    spec = _spec_file(tmp_path, budget={"trials": 20}, parallelism=1, batch_size=1,
                      evaluator_args={"table": "nb201-cifar10", "delay_s": 0.2})
    proc = subprocess.run([sys.executable, "-m", "nas", "--db", url, "submit", str(spec),
                           "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert password not in proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    pids = wait_until(lambda: _pids_running(data["job"], artifacts), "the detached driver",
                      timeout=30, interval=0.01)
    storage = Storage(url)
    try:
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert password not in argv, argv
        wait_until(lambda: storage.jobs.get(data["job"]).status == "completed",
                   "the job's end", timeout=120)
        log = Path(data["log"])  # the driver prints its last line after the status write
        wait_until(lambda: "job 1 completed" in log.read_text(), "the driver's last line")
    finally:
        for pid in _pids_running(data["job"], artifacts):  # only the driver this test started
            os.kill(pid, signal.SIGKILL)
        storage.close()
    assert password not in log.read_text()
    for command in (["status", "1"], ["list"], ["servers"], ["status", "1", "--json"],
                    ["db", "upgrade"]):
        code, output = _nas("--db", url, *command)
        assert code == 0 and password not in output, (command, output)


@pytest.mark.system
def test_serve_announces_the_database_without_its_password(secret_url, tmp_path):
    url, password = secret_url
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NAS_DB_URL": url,
           "NAS_ARTIFACTS": str(tmp_path / "artifacts")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "nas", "serve", "--once", "--name", "S"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "serve S" in output and url.replace(password, "***") in output, output
    assert password not in output
    code, listed = _nas("--db", url, "servers", "--json")
    assert code == 0 and password not in listed
    assert time.monotonic() - started < 120


# ---- a server that checks passwords (scram-sha-256), as the Docker setup runs ----------------
@pytest.fixture(scope="module")
def scram_pg() -> Iterator[tuple[str, str]]:
    """(URL without a password, password): a private server where every role but `postgres`
    logs in with a password over TCP, and a database owned by such a role."""
    from tests.conftest import skip_or_fail
    from tests.private_pg import PrivatePostgres, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        skip_or_fail("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    server = PrivatePostgres(bindir)
    (server.data / "pg_hba.conf").write_text(
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n")
    server.start()
    password = f"Pw{uuid.uuid4().hex}"
    server.new_database("jobs")
    from sqlalchemy import create_engine

    admin = create_engine(server.url.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE ann LOGIN PASSWORD '{password}'"))
        conn.execute(text('ALTER DATABASE "jobs" OWNER TO ann'))
    admin.dispose()
    try:
        yield f"postgresql://ann@127.0.0.1:{server.port}/jobs", password
    finally:
        server.remove()


@pytest.mark.integration
def test_the_password_can_come_from_a_file_as_docker_secrets_give_it(scram_pg, tmp_path,
                                                                    monkeypatch):
    url, password = scram_pg
    code, output = _nas("--db", url, "list")  # the server wants a password: none given
    assert code != 0 and "password" in output and password not in output, output
    secret = tmp_path / "db_password"
    secret.write_text(password + "\n")  # as `echo` or an editor leaves it
    monkeypatch.setenv("NAS_DB_PASSWORD_FILE", str(secret))
    code, output = _nas("--db", url, "list", "--json")
    assert code == 0 and json.loads(output) == [], output
    secret.write_text("not-the-password")
    code, output = _nas("--db", url, "list")
    assert code != 0 and "password authentication failed" in output, output
    assert "not-the-password" not in output
    monkeypatch.setenv("NAS_DB_PASSWORD_FILE", str(tmp_path / "missing"))
    code, output = _nas("--db", url, "list")
    assert code == 2 and "NAS_DB_PASSWORD_FILE" in output, output


@pytest.mark.integration
def test_a_wrong_password_in_the_url_is_refused_without_echoing_it(scram_pg):
    url, password = scram_pg
    wrong = f"Wrong{uuid.uuid4().hex}"
    code, output = _nas("--db", url.replace("ann@", f"ann:{wrong}@"), "list")
    assert code != 0 and "password authentication failed" in output, output
    assert wrong not in output
    code, output = _nas("--db", url.replace("ann@", f"ann:{password}@"), "status", "7")
    assert code == 2 and "no job 7" in output and password not in output, output
