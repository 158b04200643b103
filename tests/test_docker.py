"""docker/: no Docker engine runs here, so the image and compose file are checked statically:
the compose file parses, every command it runs is a valid command of ours (or of Ray's) with
options our tests use, and the image installs what scripts/setup.sh installs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from nas.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _options(command: list[str]) -> list[str]:
    return [part.split("=", 1)[0] for part in command if part.startswith("--")]


def test_compose_file_parses_with_the_expected_services():
    services = _compose()["services"]
    assert {"postgres", "ray-head", "ray-worker", "serve"} <= set(services)
    for name in ("ray-head", "ray-worker", "serve"):
        assert services[name]["image"] == "nas"
        env = services[name]["environment"]
        assert env["NAS_DB_URL"].startswith("postgresql://")
        assert env["NAS_RAY_ADDRESS"] == "ray-head:6379"
        assert env["NAS_ARTIFACTS"] == "/artifacts"  # one folder every node shares


@pytest.mark.integration
def test_the_serve_command_parses_with_our_cli_and_is_what_the_tests_run():
    command = _compose()["services"]["serve"]["command"]
    group = typer.main.get_command(app)
    parent = group.make_context("nas", list(command))
    sub = group.get_command(parent, command[0])
    assert sub is not None, f"nas has no command {command[0]!r}"
    sub.make_context(command[0], list(command[1:]), parent=parent)  # raises on bad options
    tests = (ROOT / "tests" / "test_serve.py").read_text()
    for option in _options(command):
        assert option in tests, f"compose runs `nas serve {option}`, which no test runs"


def test_the_cli_reads_the_environment_the_compose_file_sets():
    source = (ROOT / "nas" / "cli.py").read_text()
    for variable in ("NAS_DB_URL", "NAS_RAY_ADDRESS"):
        assert f'envvar="{variable}"' in source
    assert "NAS_ARTIFACTS" in (ROOT / "nas" / "driver.py").read_text()


@pytest.mark.integration
def test_the_ray_commands_are_valid_ray_start_options():
    services = _compose()["services"]
    ray = Path(sys.executable).with_name("ray")
    help_text = subprocess.run([str(ray), "start", "--help"], capture_output=True, text=True,
                               check=True, timeout=120).stdout
    for name in ("ray-head", "ray-worker"):
        command = services[name]["command"]
        assert services[name]["entrypoint"] == ["ray"] and command[0] == "start"
        for option in _options(command):
            assert re.search(rf"{re.escape(option)}\b", help_text), (name, option)
    head_port = next(p for p in services["ray-head"]["command"] if p.startswith("--port="))
    worker = next(p for p in services["ray-worker"]["command"] if p.startswith("--address="))
    assert worker.endswith(":" + head_port.split("=")[1])


def test_the_image_installs_what_setup_installs():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    pin = re.search(r'"torch==([0-9.]+)"', setup).group(1)
    assert f'"torch=={pin}"' in dockerfile
    assert "python:3.11" in dockerfile
    copied = re.findall(r"^COPY (\S+)", dockerfile, flags=re.MULTILINE)
    for package in ("nas", "search_spaces", "predictors", "workers"):
        assert package in copied
    for source in copied:
        assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["nas"]' in dockerfile


# ---- secrets and exposure (issue 17, item 15b) --------------------------------------------
def _strings(value: object) -> list[str]:
    """Every string in a parsed YAML value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _secret_file(compose: dict, name: str) -> Path:
    return (DOCKER / compose["secrets"][name]["file"]).resolve()


@pytest.mark.integration
def test_postgres_takes_its_password_from_a_secret_that_is_not_committed():
    compose = _compose()
    postgres = compose["services"]["postgres"]
    env = postgres["environment"]
    assert "POSTGRES_HOST_AUTH_METHOD" not in env  # the image's default: scram-sha-256
    assert "trust" not in (DOCKER / "compose.yaml").read_text().lower()  # nor via initdb args
    assert "POSTGRES_PASSWORD" not in env  # no password in the compose file itself
    name = env["POSTGRES_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert name in postgres["secrets"]
    secret = _secret_file(compose, name)
    relative = str(secret.relative_to(ROOT))
    tracked = subprocess.run(["git", "ls-files", "--", relative], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout
    assert tracked == "", f"{relative} is committed"
    ignored = subprocess.run(["git", "check-ignore", "-q", relative], cwd=ROOT)
    assert ignored.returncode == 0, f"{relative} is not in .gitignore"


def test_nas_gets_the_password_from_the_same_secret_and_no_url_holds_one():
    from sqlalchemy.engine import make_url

    compose = _compose()
    serve = compose["services"]["serve"]
    postgres_env = compose["services"]["postgres"]["environment"]
    name = postgres_env["POSTGRES_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert name in serve["secrets"]
    assert serve["environment"]["NAS_DB_PASSWORD_FILE"] == f"/run/secrets/{name}"
    url = make_url(serve["environment"]["NAS_DB_URL"])
    assert url.password is None and url.username == postgres_env["POSTGRES_USER"]
    for service in compose["services"].values():  # no service holds a password in plain text
        for text in _strings(service.get("command", [])) + _strings(service.get("environment")):
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", text), text
            assert "PASSWORD=" not in text.upper(), text
    for name, service in compose["services"].items():  # Ray's nodes never touch the database
        if name.startswith("ray-"):
            assert "secrets" not in service, name
    source = (ROOT / "nas" / "storage" / "_engine.py").read_text()
    assert '"NAS_DB_PASSWORD_FILE"' in source


def test_neither_the_database_nor_ray_publishes_a_port_and_the_readme_says_so():
    services = _compose()["services"]
    for name in ("postgres", "ray-head", "ray-worker"):
        assert "ports" not in services[name], f"{name} publishes a port"
    readme = (DOCKER / "README.md").read_text()
    for port in ("5432", "6379", "8265", "10001"):  # PostgreSQL, Ray GCS, dashboard, client
        assert port in readme, port
