"""The built wheel is complete: installed (not editable) into a fresh virtualenv, it runs a
`proxy` job with every registered proxy, `evolved.nb201` included, from a folder outside the
repository (issue 17 item 20: the evolved formulas were missing from the wheel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "search_spaces", "predictors", "workers")


def _copy_sources(dest: Path) -> Path:
    """The packages and project files, so the build leaves no `build/` or egg-info here."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def _build_wheel(src: Path, dist: Path) -> Path:
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "--quiet", "-w", str(dist), str(src)])
    (wheel,) = dist.glob("nas-*.whl")
    return wheel


def _fresh_venv(folder: Path, wheel: Path) -> Path:
    """A virtualenv holding only the wheel; the dependencies come from this environment's
    site-packages through a .pth file, added after the install so that pip does not take
    this environment's editable `nas` for an installed one. (A path in a .pth file is put on
    sys.path, but the .pth files inside it, such as the editable finder's, are not run.)"""
    _run([sys.executable, "-m", "venv", "--without-pip", str(folder)])
    python = folder / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--quiet", str(wheel)])
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    Path(site.stdout.strip(), "_dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n")
    return python


_CHECK = """
import json, sys
import nas, predictors, search_spaces, workers
from predictors.proxies import list_proxies
print(json.dumps({"files": [m.__file__ for m in (nas, predictors, search_spaces, workers)],
                  "proxies": list_proxies()}))
"""


@pytest.mark.system
@pytest.mark.slow
def test_the_installed_wheel_runs_a_proxy_job_with_every_proxy(tmp_path):
    from predictors.proxies import list_proxies

    wheel = _build_wheel(_copy_sources(tmp_path / "src"), tmp_path / "dist")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(tmp_path / "src").as_posix()
               for name in PACKAGES for p in (tmp_path / "src" / name).rglob("*") if p.is_file()}
    assert sorted(sources - shipped) == []  # every file of every package, data included

    python = _fresh_venv(tmp_path / "venv", wheel)
    run = tmp_path / "run"  # outside the repository: nothing imports from the working tree
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NAS_DB_URL")}
    env.update(VIRTUAL_ENV=str(tmp_path / "venv"),
               PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}")
    info = json.loads(_run([str(python), "-c", _CHECK], cwd=run, env=env).stdout)
    assert all(f.startswith(str(tmp_path / "venv")) for f in info["files"]), info["files"]
    assert "evolved.nb201" in info["proxies"]
    assert info["proxies"] == list_proxies()

    spec = run / "job.yaml"
    spec.write_text(
        "name: wheel-proxy\nspace: nb201\nspace_args: {channels: 4, cells_per_stage: 1}\n"
        "strategy: random\nevaluator: proxy\n"
        f"evaluator_args: {{proxies: {json.dumps(info['proxies'])}, batch_size: 8}}\n"
        "objectives: [{metric: score, mode: max}]\nbudget: {trials: 2}\nexecutor: local\n")
    nas, url = str(python.parent / "nas"), f"sqlite:///{run / 'nas.db'}"
    job = json.loads(_run([nas, "--db", url, "submit", str(spec), "--wait", "--json"],
                          cwd=run, env=env).stdout)
    assert job["status"] == "completed" and job["trials"]["completed"] == 2, job
    best = json.loads(_run([nas, "--db", url, "best", str(job["id"]), "--top", "2", "--json"],
                           cwd=run, env=env).stdout)
    assert len(best["results"]) == 2
    for result in best["results"]:
        scores = {name: result["metrics"].get(f"proxy.{name}") for name in info["proxies"]}
        assert all(isinstance(v, float) for v in scores.values()), scores


def test_a_missing_shipped_formula_registry_is_an_error_not_an_empty_registry(
        tmp_path, monkeypatch):
    """A broken installation must fail loudly instead of dropping `evolved.*` proxies."""
    from predictors import evolved

    monkeypatch.setattr(evolved, "REGISTRY_PATH", tmp_path / "absent" / "evolved.json")
    with pytest.raises(FileNotFoundError, match="lacks its data files"):
        evolved.load_formulas()
    assert evolved.load_formulas(tmp_path / "none-yet.json") == {}  # an explicit new file
