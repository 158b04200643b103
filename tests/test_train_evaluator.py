"""The `train` evaluator: datasets in every supported format, the training loop, failures."""

from __future__ import annotations

import pickle
import sys
import textwrap

import numpy as np
import pytest
import torch

from search_spaces import NB201Space
from search_spaces.validation import ArgumentError
from workers.datasets import parse_dataset
from workers.evaluators import get_evaluator
from workers.latency import device_key
from workers.task import EvaluatorSpec, TrialTask, evaluate_batch
from workers.training import TrainConfig, lr_at, train_model

pytestmark = pytest.mark.integration


def _mlp(inputs: int, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(inputs, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, classes))


# ---- datasets ------------------------------------------------------------------------------
def test_digits_is_the_default_and_is_split_and_standardised():
    data = parse_dataset(None).load()
    assert data.name == "digits" and data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert len(data.x_train) + len(data.x_val) == 1797
    assert len(data.x_val) == round(1797 * 0.2)
    assert abs(float(data.x_train.mean())) < 1e-3 and abs(float(data.x_train.std()) - 1) < 1e-2
    again = parse_dataset({"kind": "digits"}).load()
    assert np.array_equal(data.y_val, again.y_val), "the split must be deterministic"
    other = parse_dataset({"kind": "digits", "seed": 1, "limit": 100}).load()
    assert len(other.x_train) == 100 and not np.array_equal(data.y_val, other.y_val)


def _cifar_folder(tmp_path, x_nhwc, y):
    """Write real images in the official CIFAR-10 python-pickle layout."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    flat = x_nhwc.transpose(0, 3, 1, 2).reshape(len(x_nhwc), -1)
    for i, (lo, hi) in enumerate(((0, 8), (8, 16)), start=1):
        with open(folder / f"data_batch_{i}", "wb") as handle:
            pickle.dump({b"data": flat[lo:hi], b"labels": list(y[lo:hi])}, handle)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": flat[16:], b"labels": list(y[16:])}, handle)
    return folder


def test_cifar10_python_folder_with_real_images(shared_data, tmp_path):
    real = np.load(shared_data / "cifar10-test-first20.npz")
    folder = _cifar_folder(tmp_path, real["x"], real["y"])
    data = parse_dataset(f"cifar10:{folder}").load()
    assert data.input_shape == (3, 32, 32)
    assert len(data.x_train) + len(data.x_val) == 16 and len(data.x_test) == 4
    assert sorted(np.concatenate([data.y_train, data.y_val]).tolist()) == \
        sorted(real["y"][:16].tolist())
    assert data.y_test.tolist() == real["y"][16:].tolist()
    # the pixels survive the pickle layout: undo the standardisation of one test image
    raw = real["x"][16].transpose(2, 0, 1).astype(np.float32) / 255.0
    ratio = np.corrcoef(raw.ravel(), data.x_test[0].ravel())[0, 1]
    assert ratio > 0.99


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_npz_layouts(shared_data, tmp_path, layout):
    real = np.load(shared_data / "cifar10-test-first20.npz")
    x = real["x"]
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    elif layout == "nhw":
        x = x[..., 0]
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=real["y"], x_val=x[:5], y_val=real["y"][:5])
    data = parse_dataset({"kind": "npz", "path": str(path)}).load()
    channels = 1 if layout == "nhw" else 3
    assert data.input_shape == (channels, 32, 32)
    assert len(data.x_train) == 20 and data.y_val.tolist() == real["y"][:5].tolist()


def test_user_function_dataset(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(textwrap.dedent("""
        import torch

        def load():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(40, 2, 6, 6, generator=g)
            y = (x.mean(dim=(1, 2, 3)) > 0).long()
            return {"x_train": x[:30], "y_train": y[:30], "x_val": x[30:], "y_val": y[30:]}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = parse_dataset("py:my_data:load").load()
    assert data.input_shape == (2, 6, 6) and len(data.x_val) == 10 and data.num_classes == 2
    sys.modules.pop("my_data", None)


@pytest.mark.parametrize("value, message", [
    (42, "must be a name"),
    ("imagenet", "must be 'digits'"),
    ({"kind": "mnist"}, "kind must be one of"),
    ({"kind": "digits", "colour": 1}, "colour unknown field"),
    ({"kind": "npz"}, "path is required"),
    ({"kind": "npz", "path": "/nonexistent.npz"}, "is not a file"),
    ({"kind": "cifar10", "path": "/tmp"}, "not a CIFAR-10 python folder"),
    ({"kind": "digits", "val_fraction": 1.5}, "val_fraction must be in (0, 1)"),
    ({"kind": "digits", "limit": 1}, "limit must be an integer >= 2"),
    ({"kind": "function", "function": "no_colon"}, "must read 'module:function'"),
    ({"kind": "function", "function": "no_such_module_xyz:f"}, "cannot import"),
    ({"kind": "function", "function": "json:no_such"}, "has no attribute 'no_such'"),
])
def test_bad_dataset_references_name_the_fault(value, message):
    with pytest.raises(ArgumentError, match="^dataset") as info:  # the spec adds its section
        parse_dataset(value)
    assert message in str(info.value)
    assert info.value.field.startswith("dataset")


def test_npz_without_y_and_with_bad_shapes_is_rejected(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="has no 'y' array"):
        parse_dataset(f"npz:{tmp_path / 'a.npz'}")
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 8)), y=np.zeros(4))
    with pytest.raises(ValueError, match="3 or 4 dimensions"):
        parse_dataset(f"npz:{tmp_path / 'b.npz'}")
    (tmp_path / "c.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        parse_dataset(f"npz:{tmp_path / 'c.npz'}")


# ---- the training loop ---------------------------------------------------------------------
def test_cosine_schedule_with_warmup():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(99, 100, 0, 1.0) < 0.001


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("adamw", 0.01)])
def test_training_learns_digits_and_is_seeded(optimizer, lr):
    data = parse_dataset("digits").load()
    config = TrainConfig(epochs=3, batch_size=64, optimizer=optimizer, lr=lr)
    first = train_model(_mlp(64), data, config)
    assert first.val_acc > 85.0, f"an MLP must learn digits, got {first.val_acc}%"
    assert first.steps == 3 * int(np.ceil(len(data.x_train) / 64))
    again = train_model(_mlp(64), data, config)
    assert again.val_acc == first.val_acc and again.train_loss == first.train_loss
    untrained_loss = torch.nn.functional.cross_entropy(
        _mlp(64)(torch.from_numpy(data.x_val)), torch.from_numpy(data.y_val)).item()
    assert first.val_loss < untrained_loss / 3


@pytest.mark.parametrize("args, message", [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of sgd, adamw"),
    ({"lr": 0}, "lr must be a number > 0"),
    ({"lr": float("nan")}, "lr must be a number > 0"),
    ({"batch_size": "64"}, "batch_size must be a positive integer"),
    ({"learning_rate": 0.1}, "learning_rate unknown field"),
    ({"latency_repeats": 1}, "latency_repeats must be an integer >= 3"),
])
def test_bad_training_args_are_rejected(args, message):
    with pytest.raises(ArgumentError) as info:  # naming the argument; the spec adds its section
        get_evaluator("train", NB201Space(input_size=8), **args)
    assert message in str(info.value)
    assert info.value.field == message.split()[0]


def test_input_shape_mismatch_names_the_space_args_to_set():
    with pytest.raises(ValueError, match="expects inputs \\(3, 32, 32\\) but dataset digits "
                                         "has \\(1, 8, 8\\): set space_args input_channels: 1, "
                                         "input_size: 8"):
        get_evaluator("train", NB201Space(), dataset="digits")


# ---- the evaluator on a real space ---------------------------------------------------------
def _cifar_npz(shared_data, tmp_path):
    real = np.load(shared_data / "cifar10-test-first20.npz")
    path = tmp_path / "cifar20.npz"
    np.savez(path, x=real["x"], y=real["y"])
    return str(path)


def test_train_evaluator_reports_metrics_and_measured_latency(shared_data, tmp_path):
    space = NB201Space(channels=4, cells_per_stage=1)
    evaluator = get_evaluator("train", space, dataset=f"npz:{_cifar_npz(shared_data, tmp_path)}",
                              epochs=2, batch_size=8, latency_repeats=5)
    arch = space.from_key("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+"
                          "|none~0|avg_pool_3x3~1|nor_conv_3x3~2|")
    result = evaluator.evaluate(arch, space.key(arch))
    assert set(result.metrics) >= {"val_acc", "val_loss", "train_loss", "train_time_s",
                                   "params", "flops"}
    assert 0 <= result.metrics["val_acc"] <= 100 and result.metrics["train_time_s"] > 0
    assert result.params == space.params(arch) and result.flops == space.flops(arch)
    [latency] = result.measurements
    assert latency.device == device_key() and latency.source == "measured" and latency.value > 0
    assert evaluator.devices() == {device_key()}


def test_diverging_training_fails_the_trial_with_its_error(shared_data, tmp_path):
    spec = EvaluatorSpec("nb201", {"channels": 4, "cells_per_stage": 1}, "train",
                         {"dataset": f"npz:{_cifar_npz(shared_data, tmp_path)}", "epochs": 3,
                          "batch_size": 4, "lr": 1e12, "grad_clip": None,
                          "measure_latency": False})
    space = NB201Space()
    key = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+" \
          "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    [result] = evaluate_batch(spec, [TrialTask(1, key, space.from_key(key))])
    assert result.status == "failed"
    assert "training diverged" in result.error and "lower lr" in result.error


def test_too_few_outputs_for_the_dataset_classes(shared_data, tmp_path):
    """Refused when the evaluator is built (at submit, and on a worker before any training),
    not after a trial trained in full (issue 17 item 13)."""
    space = NB201Space(channels=4, cells_per_stage=1, num_classes=3)
    with pytest.raises(ValueError, match="set space_args.num_classes: 10"):
        get_evaluator("train", space, dataset=f"npz:{_cifar_npz(shared_data, tmp_path)}",
                      epochs=1)
