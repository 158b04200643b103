"""Weight-sharing strategies through the driver: the supernet search runs as one task
(checkpointed in the job's artifact folder), its derived architectures become trials scored
by the job's evaluator, and a driver killed during the search resumes from the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas import api
from nas.driver import artifact_dir
from nas.storage import Storage
from nas.strategies import TrialView, check_strategy, get_strategy
from search_spaces import NB201Space
from workers.tables import load_table
from workers.weight_sharing import CHECKPOINT
from workers.weight_sharing.task import SearchTask, run_search

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
#: A small mbconv (as in tests/test_weight_sharing_oneshot.py, one input resolution).
MBCONV_SMALL = {"stage_channels": [16, 24], "stage_strides": [2, 2], "stem_channels": 8,
                "head_channels": 32, "depths": [1, 2], "kernel_sizes": [3, 5],
                "expand_ratios": [2, 4], "width_mults": [0.5, 1.0]}
SEARCH = {"epochs": 2, "dataset": {"kind": "digits", "limit": 300}, "batch_size": 32,
          "channels": 4, "seed": 1}


def _spec(strategy: str = "darts", **overrides) -> dict:
    args = {k: v for k, v in SEARCH.items() if k != "seed"}
    spec = {"name": f"{strategy}-test", "space": "nb201", "strategy": strategy,
            "strategy_args": args, "evaluator": "benchmark",
            "evaluator_args": {"table": "nb201-cifar10"},
            "objectives": [{"metric": "valid_acc", "mode": "max"}], "budget": {"trials": 3},
            "executor": "local", "parallelism": 1, "batch_size": 1, "seed": 1}
    spec.update(overrides)
    return spec


def _search_folder(storage: Storage, job: int) -> Path:
    """The job's checkpoint folder: its database's, then its own."""
    return artifact_dir(storage.database_id, job) / "search"


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


def test_darts_job_scores_the_derived_cell_then_searches_around_it(artifacts):
    storage = Storage("sqlite://")
    job = api.submit(storage, _spec())
    assert api.run(storage, job) == "completed"
    trials = storage.trials.load(job)
    assert len(trials) == 3 and all(t.status == "completed" for t in trials)
    folder = _search_folder(storage, job)
    assert (folder / CHECKPOINT).exists()
    record = json.loads((folder / "history.json").read_text())
    assert [r["epoch"] for r in record["history"]] == [1, 2]
    derived = record["derived"][0]
    # trial 1 is the derived cell, scored by the table: its true accuracy, collapse or not
    assert trials[0].key == derived["key"]
    assert trials[0].metrics["valid_acc"] == \
        load_table("nb201-cifar10").rows[derived["key"]]["valid_acc"]
    assert trials[0].metrics["search.supernet_val_acc"] == derived["supernet_val_acc"]
    # then mutations of the best so far: one decision away from a scored trial
    space = NB201Space()
    for later in trials[1:]:
        dna = space.to_dna(space.from_key(later.key))
        assert min(sum(a != b for a, b in zip(dna, space.to_dna(space.from_key(t.key)),
                                              strict=True))
                   for t in trials if t.number < later.number) == 1
    state = storage.jobs.get(job).strategy_state
    assert state["derived"][0]["key"] == derived["key"]
    assert state["search"]["epochs"] == 2


def _driver(url: str, job: int, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas", "--db", url, "drive", str(job)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@pytest.mark.system
def test_driver_killed_during_the_search_resumes_from_its_checkpoint(tmp_path, artifacts):
    url = f"sqlite:///{tmp_path / 'ws.db'}"
    storage = Storage(url)
    spec = _spec(strategy_args={**{k: v for k, v in SEARCH.items() if k != "seed"},
                                "epochs": 4})
    clean = api.submit(storage, spec)
    assert api.run(storage, clean) == "completed"
    job = api.submit(storage, {**spec, "name": "killed"})
    checkpoint = _search_folder(storage, job) / CHECKPOINT
    env = {**os.environ, "NAS_ARTIFACTS": str(artifacts), "PYTHONPATH": str(ROOT)}
    proc = _driver(url, job, env)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists():
            assert proc.poll() is None, "the driver ended before the first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert storage.trials.load(job) == []  # no trial before the search has finished
    assert api.run(storage, job) == "completed"  # `nas resume`: the lease's owner is dead
    record = json.loads((checkpoint.parent / "history.json").read_text())
    assert record["resumed_from_epoch"] >= 1
    assert [t.key for t in storage.trials.load(job)] == \
        [t.key for t in storage.trials.load(clean)]
    clean_record = json.loads((_search_folder(storage, clean) / "history.json").read_text())
    assert record["derived"] == clean_record["derived"]


@pytest.fixture(scope="module")
def darts_result(tmp_path_factory):
    task = SearchTask("darts", "nb201", {}, {k: v for k, v in SEARCH.items() if k != "seed"},
                      1, str(tmp_path_factory.mktemp("search")))
    return run_search(task)


def test_weight_sharing_strategy_passes_check_strategy_once_searched(darts_result):
    def factory(seed):
        strategy = get_strategy("darts", NB201Space(), seed=seed,
                                **{k: v for k, v in SEARCH.items() if k != "seed"})
        strategy.set_outcome(darts_result)
        return strategy

    check_strategy(factory, trials=30)


def test_derived_archs_come_first_and_the_state_round_trips(darts_result):
    space = NB201Space()
    strategy = get_strategy("darts", space, seed=0,
                            **{k: v for k, v in SEARCH.items() if k != "seed"})
    with pytest.raises(RuntimeError, match="before the supernet search ran"):
        strategy.ask()
    strategy.set_outcome(darts_result)
    first = strategy.ask()
    assert space.key(first) == darts_result.keys[0]
    strategy.tell(TrialView(1, first, space.key(first), "completed", {}, 0.5))
    clone = get_strategy("darts", space, seed=0,
                         **{k: v for k, v in SEARCH.items() if k != "seed"})
    clone.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert [space.key(clone.ask()) for _ in range(4)] == \
        [space.key(strategy.ask()) for _ in range(4)]


def test_bad_weight_sharing_arguments_fail_at_submit():
    from nas.errors import SpecError
    from nas.spec import parse_spec

    with pytest.raises(SpecError, match="strategy_args.order"):
        parse_spec(_spec(strategy_args={"order": 3}))
    with pytest.raises(SpecError, match="mbconv"):
        parse_spec(_spec(space="mbconv"))


@pytest.mark.ray
def test_a_search_runs_as_a_ray_task(artifacts):
    storage = Storage("sqlite://")
    job = api.submit(storage, _spec(executor="ray", budget={"trials": 2}))
    assert api.run(storage, job) == "completed"
    record = json.loads((_search_folder(storage, job) / "history.json").read_text())
    assert record["worker"].split(":")[-1] != str(os.getpid())  # ran in a Ray worker
    assert [t.key for t in storage.trials.load(job)][0] == record["derived"][0]["key"]


def test_oneshot_job_exports_the_subnet_with_its_inherited_weights(artifacts, tmp_path):
    """A one-shot job on mbconv scored by the proxy evaluator (no training): `nas export`
    hands over the derived subnet with the weights it inherited from the supernet."""
    import torch

    from nas.export import export_trial, split_weights
    from search_spaces import get_space

    space_args = {"input_channels": 1, "input_size": 8, "num_classes": 10}
    space_args.update(MBCONV_SMALL)
    storage = Storage("sqlite://")
    job = api.submit(storage, _spec(
        "oneshot", space="mbconv", space_args=space_args,
        strategy_args={"epochs": 1, "dataset": {"kind": "digits", "limit": 200},
                       "batch_size": 32, "population": 6, "generations": 1, "top_k": 2,
                       "latency": "none", "bn_samples": 64},
        evaluator="proxy", evaluator_args={"proxies": ["synflow", "params"]},
        objectives=[{"metric": "score", "mode": "max"}], budget={"trials": 2}))
    assert api.run(storage, job) == "completed"
    trials = storage.trials.load(job)
    assert all("search.supernet_acc" in t.metrics for t in trials)
    first = trials[0]
    weights = storage.trials.weights(job, first.number)
    saved = (_search_folder(storage, job) / "subnet-1.pt").read_bytes()
    assert weights == saved
    target = tmp_path / "best.pt"
    export_trial(storage, job, first.number, "torchscript", str(target))
    model = torch.jit.load(str(target))
    space = get_space("mbconv", **space_args)
    reference = space.build(space.from_key(first.key))
    state, normalisation = split_weights(saved)
    reference.load_state_dict(state)
    reference.eval()
    # the export takes inputs as the dataset gives them: the search's standardisation folded in
    mean, std = (torch.tensor(normalisation[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    x = torch.rand(2, 1, 8, 8) * 16
    assert torch.allclose(model(x), reference((x - mean) / std), atol=1e-4)
