"""Trained weights travel from the worker to the database for a job's best trials, and
`nas export` hands over the trained model: its ONNX file scores the stored validation
accuracy on the same held-out digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sqlalchemy import select

from nas import api
from nas.export import export_trial, split_weights
from nas.storage import Storage
from nas.storage.schema import trial_weights, trials
from search_spaces import get_space
from workers.datasets import parse_dataset

pytestmark = pytest.mark.integration

SPACE_ARGS = {"channels": 4, "cells_per_stage": 1, "input_channels": 1, "input_size": 8}


def _spec(**overrides) -> dict:
    spec = {
        "name": "weights", "space": "nb201", "space_args": SPACE_ARGS,
        "strategy": "random", "evaluator": "train",
        "evaluator_args": {"dataset": {"kind": "digits", "limit": 200}, "epochs": 1,
                           "batch_size": 32, "measure_latency": False},
        "objectives": [{"metric": "val_acc", "mode": "max"}],
        "budget": {"trials": 6}, "executor": "local", "keep_weights": 2, "seed": 1,
    }
    spec.update(overrides)
    return spec


def _kept(storage: Storage, job: int) -> list[int]:
    query = (select(trials.c.number).join(trial_weights, trial_weights.c.trial_id == trials.c.id)
             .where(trials.c.job_id == job).order_by(trials.c.number))
    with storage.read() as conn:
        return list(conn.execute(query).scalars())


def test_weights_of_the_best_trials_are_kept_and_exported(db_url, tmp_path):
    import onnxruntime

    storage = Storage(db_url)
    job = api.submit(storage, _spec())
    assert api.run(storage, job) == "completed"
    rows = [t for t in storage.trials.load(job) if t.status == "completed"]
    assert len(rows) == 6
    ranked = sorted(rows, key=lambda t: (-t.score, t.number))
    assert _kept(storage, job) == sorted(t.number for t in ranked[:2])

    summary = export_trial(storage, job, None, "onnx", str(tmp_path / "best.onnx"))
    assert summary["trial"] == ranked[0].number and summary["weights"] == "trained"
    # the exported network is the trained one: same accuracy on the same validation split,
    # given as the loader reads it (the standardisation is folded into the model)
    data = parse_dataset({"kind": "digits", "limit": 200}).load()
    mean, std = (np.asarray(data.normalisation[k], dtype=np.float32).reshape(1, -1, 1, 1)
                 for k in ("mean", "std"))
    session = onnxruntime.InferenceSession(str(tmp_path / "best.onnx"),
                                           providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": data.x_val * std + mean})
    accuracy = 100.0 * float((logits.argmax(axis=1) == data.y_val).mean())
    assert accuracy == pytest.approx(ranked[0].metrics["val_acc"], abs=0.01)
    # ... and not a fresh initialisation, which is no better than chance
    space = get_space("nb201", **SPACE_ARGS)
    torch.manual_seed(0)
    fresh = space.build(space.from_key(summary["key"])).eval()
    with torch.no_grad():
        chance = (fresh(torch.from_numpy(data.x_val)).argmax(1).numpy() == data.y_val).mean()
    assert accuracy > 100.0 * chance + 20

    state, normalisation = split_weights(storage.trials.weights(job, ranked[1].number))
    assert normalisation == {k: pytest.approx(v) for k, v in data.normalisation.items()}
    second = space.build(space.from_key(ranked[1].key))
    assert set(state) == set(second.state_dict())
    second.load_state_dict(state)  # strict: the stored weights fit the architecture
    assert storage.trials.weights(job, ranked[-1].number) is None


def test_keep_weights_zero_keeps_none_and_export_says_initialised(sqlite_url, tmp_path):
    storage = Storage(sqlite_url)
    job = api.submit(storage, _spec(keep_weights=0, budget={"trials": 2}))
    api.run(storage, job)
    assert _kept(storage, job) == []
    summary = export_trial(storage, job, None, "torchscript", str(tmp_path / "m.pt"))
    assert summary["weights"] == "initialised"
    json_summary = export_trial(storage, job, None, "json", str(tmp_path / "m.json"))
    assert "weights" not in json_summary and json.loads((tmp_path / "m.json").read_text())


def test_evaluator_can_skip_weights(sqlite_url):
    storage = Storage(sqlite_url)
    spec = _spec(budget={"trials": 2})
    spec["evaluator_args"] = dict(spec["evaluator_args"], save_weights=False)
    job = api.submit(storage, spec)
    api.run(storage, job)
    assert _kept(storage, job) == []
    assert np.isfinite([t.score for t in storage.trials.load(job)]).all()
