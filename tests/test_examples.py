"""Every job in `examples/` is a valid spec, and the per-space training examples really
search: on a small budget the best architecture found beats the median random one of the
same job (the evolution's first population is uniformly random) by a clear margin."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from nas import api
from nas.spec import load_spec_file
from nas.storage import Storage, device_measurements

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRAIN_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*-digits-train.yaml"))


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
    trials = storage.load_trials(job)
    completed = [t for t in trials if t["status"] == "completed"]
    assert len(completed) == 16, [t["error"] for t in trials if t["status"] != "completed"]
    random_phase = [t["metrics"]["val_acc"] for t in completed if t["number"] <= 8]
    best = max(t["metrics"]["val_acc"] for t in completed)
    median = statistics.median(random_phase)
    assert best >= median + 2.0, f"best {best:.1f}% vs median random {median:.1f}%"
    spec = storage.get_job(job)["spec"]
    stored = device_measurements(storage, [t["key"] for t in completed], spec["space"])
    assert all(any(m["source"] == "measured" and m["metric"] == "latency_ms" and m["value"] > 0
                   for m in stored.get(t["key"], [])) for t in completed)
