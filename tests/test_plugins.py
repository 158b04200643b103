"""Plugins and users' own code, for real: a distribution installed with pip into a fresh
virtualenv registers a space, a strategy, an evaluator and a proxy through entry points, the
listing commands show them with their origin and jobs use them; `nas serve` runs a job that
references a module only when `--allow-modules` lists its package."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from nas import api
from nas.spec import spec_modules
from nas.storage import Storage
from tests.conftest import ROOT, nb201_spec, wait_until

pytestmark = pytest.mark.system

PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "nas-demo-plugin"
version = "0.3"

[project.entry-points."nas.spaces"]
demo_space = "nas_demo_plugin:DemoSpace"
broken = "nas_demo_missing:Space"

[project.entry-points."nas.strategies"]
demo-random = "nas_demo_plugin:DemoRandom"

[project.entry-points."nas.evaluators"]
demo_eval = "nas_demo_plugin:DemoEvaluator"

[project.entry-points."nas.proxies"]
demo_proxy = "nas_demo_plugin:demo_proxy"

[tool.setuptools]
py-modules = ["nas_demo_plugin"]
"""

PLUGIN_MODULE = '''
"""A plugin: NB201 cells, random search, a cheap evaluator and a proxy."""
from nas.strategies import RandomSearch
from search_spaces import NB201Space
from workers.evaluators import Evaluation, Evaluator


class DemoSpace(NB201Space):
    name = "demo_space"
    description = "NB201 cells, from a plugin"


class DemoRandom(RandomSearch):
    name = "demo-random"
    description = "random search, from a plugin"


class DemoEvaluator(Evaluator):
    """Counts the 3x3 convolutions of a cell (a plugin's evaluator)."""

    name = "demo_eval"
    cheap = True

    def evaluate(self, arch, key):
        return Evaluation(metrics={"score": float(key.count("conv_3x3"))})

    def metric_names(self):
        return {"score"}


def demo_proxy(model, inputs, targets, loss_fn):
    """Parameter count (a plugin's proxy)."""
    return float(sum(p.numel() for p in model.parameters()))
'''

PLUGIN = "plugin nas-demo-plugin 0.3"


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def _venv_seeing_this_environment(folder: Path) -> Path:
    """A virtualenv without packages of its own that imports this environment's packages and
    the working tree's (a .pth file), so that a plugin installed into it is the only
    difference; returns its python."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(folder)])
    python = folder / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    Path(site.stdout.strip(), "_this_environment.pth").write_text(
        f"{ROOT}\n{sysconfig.get_path('purelib')}\n")
    return python


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtualenv with the demo plugin pip-installed (not editable)."""
    folder = tmp_path_factory.mktemp("plugin")
    src = folder / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (src / "nas_demo_plugin.py").write_text(PLUGIN_MODULE)
    python = _venv_seeing_this_environment(folder / "venv")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-build-isolation", "--no-index", "--quiet", str(src)], cwd=folder)
    (src / "nas_demo_plugin.py").unlink()  # what runs is the installed copy
    return python


def _nas(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NAS_DB_URL")}
    return _run([str(python), "-m", "nas", *args], cwd=cwd, env=env)


def test_an_installed_plugin_is_listed_with_its_origin(plugin_python: Path, tmp_path) -> None:
    listed = {}
    for command in ("spaces", "strategies", "evaluators", "proxies"):
        result = _nas(plugin_python, tmp_path, command, "--json")
        listed[command] = {row["name"]: row for row in json.loads(result.stdout)}
        if command == "spaces":  # the broken entry point: one line, the others still listed
            assert result.stderr.splitlines() == [
                "warning: plugin entry point nas.spaces 'broken' (nas_demo_missing:Space, "
                "nas-demo-plugin 0.3) failed to load: ModuleNotFoundError: No module named "
                "'nas_demo_missing'"]
    assert listed["spaces"]["demo_space"]["origin"] == PLUGIN
    assert listed["spaces"]["demo_space"]["size"] == 15625
    assert listed["spaces"]["nb201"]["origin"] == "built-in"
    assert listed["strategies"]["demo-random"]["origin"] == PLUGIN
    assert listed["evaluators"]["demo_eval"] == {
        "name": "demo_eval", "origin": PLUGIN,
        "description": "Counts the 3x3 convolutions of a cell (a plugin's evaluator)."}
    assert listed["proxies"]["demo_proxy"]["origin"] == PLUGIN
    assert "broken" not in listed["spaces"]
    table = _nas(plugin_python, tmp_path, "evaluators").stdout
    assert "demo_eval" in table and PLUGIN in table


_IMPORTS_NOTHING = """
import json, sys
from nas.spec import parse_spec
from tests.conftest import nb201_spec
parse_spec(nb201_spec())
parse_spec(nb201_spec(evaluator="proxy", evaluator_args={"proxies": ["synflow"]},
                      objectives=[{"metric": "score", "mode": "max"}]))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("nas_demo"))))
"""


def test_a_spec_naming_no_module_imports_no_plugin(plugin_python: Path) -> None:
    result = _run([str(plugin_python), "-c", _IMPORTS_NOTHING], cwd=ROOT)
    assert json.loads(result.stdout) == [] and result.stderr == ""


def _job(python: Path, run: Path, spec: dict[str, Any]) -> dict[str, Any]:
    path = run / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    result = _nas(python, run, "--db", f"sqlite:///{run / 'nas.db'}", "submit", str(path),
                  "--wait", "--json")
    return json.loads(result.stdout)


def test_jobs_use_the_plugin_space_strategy_evaluator_and_proxy(plugin_python: Path,
                                                                 tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    job = _job(plugin_python, run, {
        "name": "plugin-eval", "space": "demo_space", "strategy": "demo-random",
        "evaluator": "demo_eval", "objectives": [{"metric": "score", "mode": "max"}],
        "budget": {"trials": 5}, "executor": "local"})
    assert job["status"] == "completed" and job["trials"]["completed"] == 5, job
    job = _job(plugin_python, run, {
        "name": "plugin-proxy", "space": "demo_space",
        "space_args": {"channels": 4, "cells_per_stage": 1}, "strategy": "random",
        "evaluator": "proxy",
        "evaluator_args": {"proxies": ["demo_proxy", "synflow"], "batch_size": 8},
        "objectives": [{"metric": "score", "mode": "max"}], "budget": {"trials": 2},
        "executor": "local"})
    assert job["status"] == "completed" and job["trials"]["completed"] == 2, job
    best = json.loads(_nas(plugin_python, run, "--db", f"sqlite:///{run / 'nas.db'}", "best",
                           str(job["id"]), "--json").stdout)
    assert best["results"][0]["metrics"]["proxy.demo_proxy"] > 0


# ---- module:attr references in a job -------------------------------------------------------------
USER_MODULE = '''
from nas.strategies import RandomSearch
from search_spaces import NB201Space

space = NB201Space(channels=4, cells_per_stage=1)


class Mine(RandomSearch):
    """Random search, from the user's own module."""


def evaluate(arch, ctx):
    return {"convs": float(sum(op.startswith("nor_conv") for op in arch["ops"]))}
'''


def test_a_job_runs_the_users_space_strategy_and_function_from_the_current_folder(
        tmp_path) -> None:
    """Through the console script (whose sys.path lacks the current folder), as a user runs
    `nas submit` beside their module."""
    (tmp_path / "usermod_job.py").write_text(USER_MODULE)
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({
        "name": "references", "space": "usermod_job:space", "strategy": "usermod_job:Mine",
        "evaluator": "usermod_job:evaluate", "evaluator_args": {"device": "cpu"},
        "objectives": [{"metric": "convs", "mode": "max"}], "budget": {"trials": 6},
        "executor": "local"}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NAS_DB_URL")}
    nas = str(Path(sys.executable).parent / "nas")
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    job = json.loads(_run([nas, "--db", url, "submit", str(spec), "--wait", "--json"],
                          cwd=tmp_path, env=env).stdout)
    assert job["status"] == "completed" and job["trials"]["completed"] == 6, job
    stored = Storage(url).jobs.get(job["id"]).spec
    assert (stored["space"], stored["strategy"], stored["evaluator"]) == \
        ("usermod_job:space", "usermod_job:Mine", "usermod_job:evaluate")
    assert spec_modules(stored) == ["usermod_job"]


# ---- nas serve --allow-modules ------------------------------------------------------------------
USER_STRATEGY = '''
from nas.strategies import RandomSearch


class Mine(RandomSearch):
    """Random search, from the user's own module."""
'''


def _serve(procs: list, url: str, cwd: Path, *args: str) -> subprocess.Popen:
    """`nas serve` through the console script, whose sys.path does not hold `cwd`: a module
    there is found as `uvicorn main:app` finds one."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NAS_DB_URL")}
    log = open(cwd / f"serve-{len(procs)}.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "nas"), "--db", url, "serve",
                             "--poll-s", "0.2", *args], cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    procs.append(proc)
    return proc


def test_serve_runs_module_jobs_only_from_its_allow_list(tmp_path, monkeypatch,
                                                         procs) -> None:
    module = f"allowmod_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(USER_STRATEGY)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    storage = Storage(url)
    small = {"budget": {"trials": 4}, "parallelism": 1, "batch_size": 2}
    refused = api.submit(storage, nb201_spec(name="mine", strategy=f"{module}:Mine",
                                             strategy_args={}, **small))
    plain = api.submit(storage, nb201_spec(name="plain", **small))

    serve = _serve(procs, url, tmp_path)  # no --allow-modules: no module runs
    wait_until(lambda: storage.jobs.get(plain).status == "completed", "the plain job",
               logs=(tmp_path / "serve-0.log",))
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=60) == 0
    job = storage.jobs.get(refused)
    assert job.status == "failed" and storage.trials.load(refused) == []
    assert job.error == (f"the job references module {module}, which this serve process "
                            f"may not import: start `nas serve --allow-modules {module}` "
                            "(none were given)")
    log = (tmp_path / "serve-0.log").read_text()
    assert f"job {refused} failed: the job references module {module}" in log
    assert "Traceback" not in log

    allowed = api.submit(storage, nb201_spec(name="mine-allowed", strategy=f"{module}:Mine",
                                             strategy_args={}, **small))
    other = _serve(procs, url, tmp_path, "--once", "--allow-modules", "otherpkg")
    assert other.wait(timeout=60) == 0
    assert "it allows only otherpkg" in storage.jobs.get(allowed).error

    allowed = api.submit(storage, nb201_spec(name="mine-allowed", strategy=f"{module}:Mine",
                                             strategy_args={}, **small))
    ok = _serve(procs, url, tmp_path, "--once", "--allow-modules", f"json,{module}")
    assert ok.wait(timeout=120) == 0
    assert storage.jobs.get(allowed).status == "completed", \
        (tmp_path / "serve-2.log").read_text()
    assert len(storage.trials.load(allowed)) == 4
    storage.close()
    sys.modules.pop(module, None)
