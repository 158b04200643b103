"""Every job in `examples/` is a valid spec, and the per-space training examples really
search: on a small budget the best architecture found beats the median random one of the
same job (the evolution's first population is uniformly random) by a clear margin."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from nas import api
from nas.spec import load_spec_file
from nas.storage import Storage, device_measurements

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRAIN_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*-digits-train.yaml"))


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_is_a_valid_spec(name):
    spec = load_spec_file(EXAMPLES / name)
    assert spec.name and (spec.budget_trials or spec.budget_seconds)


def test_there_is_a_training_example_per_space():
    from search_spaces import list_spaces

    spaces = {load_spec_file(EXAMPLES / n).space for n in TRAIN_EXAMPLES}
    assert spaces == set(list_spaces())


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAIN_EXAMPLES)
def test_training_example_finds_better_than_median_random(name, tmp_path):
    storage = Storage(f"sqlite:///{tmp_path / 'nas.db'}")
    job = api.submit_file(storage, EXAMPLES / name,
                          ["budget.trials=16", "strategy_args.population=8", "executor=local"])
    assert api.run(storage, job) == "completed"
    trials = storage.trials.load(job)
    completed = [t for t in trials if t.status == "completed"]
    assert len(completed) == 16, [t["error"] for t in trials if t.status != "completed"]
    random_phase = [t.metrics["val_acc"] for t in completed if t.number <= 8]
    best = max(t.metrics["val_acc"] for t in completed)
    median = statistics.median(random_phase)
    assert best >= median + 2.0, f"best {best:.1f}% vs median random {median:.1f}%"
    spec = storage.jobs.get(job).spec
    stored = device_measurements(storage, [t.key for t in completed], spec["space"])
    assert all(any(m["source"] == "measured" and m["metric"] == "latency_ms" and m["value"] > 0
                   for m in stored.get(t.key, [])) for t in completed)


# ---- examples/custom: a user's own model family, searched from the CLI and from Python ----
CUSTOM = EXAMPLES / "custom"
#: small budgets: 8 trials of 2 epochs (the example itself: 24 trials of 5 epochs)
CUSTOM_SMALL = {"budget.trials": "8", "evaluator_args.epochs": "2", "strategy_args.init": "4"}


def _run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`command` run in examples/custom, its artifacts (driver logs) under `tmp_path`."""
    import os

    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent),
           "NAS_ARTIFACTS": str(tmp_path / "artifacts")}
    done = subprocess.run(command, cwd=CUSTOM, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_custom_job_is_a_valid_spec(monkeypatch):
    monkeypatch.chdir(CUSTOM)  # `model:space` is found in the current folder
    spec = load_spec_file(CUSTOM / "job.yaml")
    assert (spec.space, spec.evaluator) == ("model:space", "model:evaluate")
    assert spec.early_stopping["rule"] == "median"


@pytest.mark.system
def test_custom_example_from_the_cli(tmp_path):
    """`cd examples/custom && nas submit job.yaml --wait` (on a local Ray), then `nas best`."""
    nas = [sys.executable, "-m", "nas", "--db", f"sqlite:///{tmp_path / 'cli.db'}"]
    overrides = [a for k, v in CUSTOM_SMALL.items() for a in ("--set", f"{k}={v}")]
    _run([*nas, "submit", "job.yaml", "--wait", "--json", *overrides], tmp_path)
    best = json.loads(_run([*nas, "best", "1", "--top", "3", "--json"], tmp_path).stdout)
    status = json.loads(_run([*nas, "status", "1", "--json"], tmp_path).stdout)
    assert status["status"] == "completed" and status["space"] == "model:space"
    assert status["trials"]["completed"] + status["trials"]["pruned"] == 8
    assert best["results"][0]["objectives"]["val_acc"] > 50.0


@pytest.mark.system
def test_custom_example_from_python(tmp_path):
    """`python search.py`: nas.search, job.best() printed, the best exported to ONNX."""
    import onnx

    output = tmp_path / "best.onnx"
    done = _run([sys.executable, "search.py", "--db", f"sqlite:///{tmp_path / 'py.db'}",
                 "--trials", CUSTOM_SMALL["budget.trials"], "--epochs",
                 CUSTOM_SMALL["evaluator_args.epochs"], "--executor", "local",
                 "--output", str(output)], tmp_path)
    lines = done.stdout.splitlines()
    assert ": completed, trials" in lines[0] and "'failed': 0" in lines[0], lines[0]
    assert lines[1].startswith("1. trial") and lines[-1].startswith("exported trial")
    onnx.checker.check_model(onnx.load(str(output)))
    storage = Storage(f"sqlite:///{tmp_path / 'py.db'}")
    spec = storage.jobs.get(1).spec
    assert (spec["space"], spec["evaluator"]) == ("model:space", "model:evaluate")
