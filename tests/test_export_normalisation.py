"""An exported trained model takes the inputs as the dataset gives them (issue 17 item 15l):
the per-channel standardisation the `train` evaluator applied is folded into the ONNX and
TorchScript models and stated in the export summary, so raw digits score what training
measured."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nas import api
from nas.cli import app
from nas.storage import Storage
from workers.datasets import parse_dataset

pytestmark = pytest.mark.integration

DATASET = {"kind": "digits", "limit": 600}
SPEC = {
    "name": "digits", "space": "nb201",
    "space_args": {"channels": 8, "cells_per_stage": 1, "input_channels": 1, "input_size": 8},
    "strategy": "random", "evaluator": "train",
    "evaluator_args": {"dataset": DATASET, "epochs": 4, "batch_size": 32,
                       "measure_latency": False},
    "objectives": [{"metric": "val_acc", "mode": "max"}],
    "budget": {"trials": 2}, "executor": "local", "keep_weights": 1, "seed": 3,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("normalisation")
    url = f"sqlite:///{folder / 'nas.db'}"
    storage = Storage(url)
    job = api.submit(storage, SPEC)
    assert api.run(storage, job) == "completed"
    storage.close()
    return {"url": url, "job": str(job), "folder": folder}


def raw_validation_digits() -> tuple[np.ndarray, np.ndarray, dict]:
    """The validation split as the loader gives it before standardisation: pixels k/16."""
    data = parse_dataset(DATASET).load()
    norm = data.normalisation
    mean = np.asarray(norm["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(norm["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    raw = (data.x_val * std + mean).astype(np.float32)
    assert np.allclose(raw * 16, np.round(raw * 16), atol=1e-3)  # really the raw pixels
    assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4
    return raw, data.y_val, norm


def export(trained: dict, fmt: str) -> tuple[dict, str]:
    path = trained["folder"] / f"best.{fmt}"
    result = CliRunner().invoke(app, ["--db", trained["url"], "export", trained["job"],
                                      "--best", "--format", fmt, "-o", str(path), "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout), str(path)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_model_scores_the_trained_accuracy_on_raw_inputs(trained, fmt):
    summary, path = export(trained, fmt)
    raw, labels, norm = raw_validation_digits()
    assert summary["weights"] == "trained"
    assert summary["input_normalisation"] == {"mean": pytest.approx(norm["mean"]),
                                              "std": pytest.approx(norm["std"]),
                                              "folded": True}
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {"input": raw})
    else:
        with torch.no_grad():
            logits = torch.jit.load(path)(torch.from_numpy(raw)).numpy()
    accuracy = 100.0 * float((logits.argmax(axis=1) == labels).mean())
    trained_acc = summary["metrics"]["val_acc"]
    assert trained_acc > 50  # a network that learned something, so the check means something
    assert accuracy == pytest.approx(trained_acc, abs=1.0)
