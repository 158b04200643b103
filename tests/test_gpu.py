"""Training and weight-sharing searches on a GPU (`device`), and GPU shares for Ray trials.

The tests marked `needs_cuda` run where torch sees a CUDA device and skip elsewhere with that
reason: this project's CI machines have no GPU, and these tests were run on an NVIDIA H200
lent to a session (docs/guide.md, "GPUs"). Everything else runs on any machine: the device
arguments, the GPU shares that Ray trial tasks ask for (on a Ray cluster whose node declares
a GPU), and the one-line failure of a trial that asks for a GPU its worker lacks.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from nas import api
from nas.storage import Storage
from search_spaces import get_space
from search_spaces.nb201 import OPS as NB201_OPS
from tests.conftest import ray_test_cluster
from workers.evaluators import get_evaluator
from workers.evaluators.benchmark import BenchmarkEvaluator
from workers.evaluators.train import TrainEvaluator
from workers.latency import device_key
from workers.task import EvaluatorSpec, TrialTask, evaluate_batch
from workers.torch_device import check_device, gpu_device_key, gpu_share, resolve_device
from workers.weight_sharing import get_search

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")

NB201_DIGITS = {"channels": 4, "cells_per_stage": 1, "input_channels": 1, "input_size": 8}
SPACES = {
    "nb201": NB201_DIGITS,
    "quant": {"input_channels": 1, "input_size": 8},
    "mbconv": {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24],
               "stage_strides": [2, 2], "stem_channels": 8, "head_channels": 32,
               "depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [2, 4],
               "width_mults": [0.5, 1.0], "resolutions": [6, 8]},
    "hybrid": {"input_channels": 1, "input_size": 8, "blocks": 3,
               "widths": [[8, 16], [16, 24]], "mlp_ratio": 2, "stem_stride": 2},
}
TRAIN_ARGS = {"dataset": {"kind": "digits", "limit": 400}, "epochs": 3, "batch_size": 32,
              "lr": 0.05, "latency_repeats": 5}
SEARCH_DATA = {"dataset": {"kind": "digits", "limit": 128}, "batch_size": 32, "seed": 3}


# ---- device names and GPU shares (any machine) ------------------------------------------------
@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_are_accepted(name):
    assert check_device("evaluator_args.device", name) == name


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:", "cuda:x", "CPU", "", 0, None])
def test_bad_device_names_name_the_field(name):
    with pytest.raises(ValueError, match=r"evaluator_args\.device must be auto, cpu, cuda or "):
        check_device("evaluator_args.device", name)


@pytest.mark.parametrize("gpus,slots,share", [
    (0, 4, 0.0), (0.5, 2, 0.0), (1, 1, 1.0), (4, 2, 1.0), (2, 2, 1.0),
    (1, 2, 0.5), (1, 3, 0.3333), (2, 3, 0.5), (2, 5, 0.3333), (8, 64, 0.125),
])
def test_gpu_share_fits_every_slot_at_once(gpus, slots, share):
    got = gpu_share(gpus, slots)
    assert got == share
    if got:  # the tasks in flight fit on the whole GPUs, each a whole multiple of its share
        assert int(1 / got + 1e-9) * int(gpus) >= slots


@pytest.mark.parametrize("make", [
    lambda: get_evaluator("train", get_space("nb201", **NB201_DIGITS), deterministic="yes"),
    lambda: get_search("darts", get_space("nb201"), deterministic=1),
])
def test_deterministic_must_be_a_boolean(make):
    with pytest.raises(ValueError, match=r"^deterministic must be true or false"):
        make()


def test_which_evaluators_ask_for_gpus():
    assert TrainEvaluator.uses_gpu({}) and TrainEvaluator.uses_gpu({"device": "cuda:1"})
    assert not TrainEvaluator.uses_gpu({"device": "cpu"})
    assert not BenchmarkEvaluator.uses_gpu({"table": "nb201-cifar10"})


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA device")
def test_a_gpu_the_worker_lacks_fails_the_trial_in_one_line():
    spec = EvaluatorSpec("nb201", NB201_DIGITS, "train", {**TRAIN_ARGS, "device": "cuda"})
    arch = get_space("nb201", **NB201_DIGITS).sample(np.random.default_rng(0))
    [result] = evaluate_batch(spec, [TrialTask(1, "k", arch)])
    assert result.status == "failed"
    assert result.error == ("evaluator_args.device is 'cuda' but this worker has no CUDA "
                            "device")
    with pytest.raises(ValueError, match="strategy_args.device is 'cuda:0' but this worker"):
        get_search("darts", get_space("nb201", **NB201_DIGITS), device="cuda:0",
                   **SEARCH_DATA).run(tempfile.mkdtemp())


@pytest.mark.integration
def test_cpu_training_ignores_the_gpu_path():
    """`device: cpu` trains, measures and returns weights exactly as before the option."""
    space = get_space("nb201", **NB201_DIGITS)
    arch = space.sample(np.random.default_rng(1))
    evaluation = get_evaluator("train", space, **TRAIN_ARGS, device="cpu").evaluate(arch, "k")
    assert [m.device for m in evaluation.measurements] == [device_key()]
    assert evaluation.metrics["val_acc"] > 20


# ---- Ray asks for GPU shares (a node that declares a GPU; torch on it sees none) --------------
@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[Any]:
    with ray_test_cluster(num_cpus=2, num_gpus=1, object_store_memory=100 * 2**20) as cluster:
        cluster.wait_for_nodes()
        yield cluster


def _train_job(device: str) -> dict[str, Any]:
    return {"name": f"gpu-share-{device}", "space": "nb201", "space_args": NB201_DIGITS,
            "strategy": "random", "evaluator": "train",
            "evaluator_args": {**TRAIN_ARGS, "epochs": 1, "device": device,
                               "measure_latency": False},
            "objectives": [{"metric": "val_acc", "mode": "max"}],
            "budget": {"trials": 4}, "parallelism": 2, "executor": "ray", "seed": 0}


@pytest.mark.ray
def test_ray_trials_train_on_their_share_of_the_cluster_gpus(gpu_cluster, sqlite_url,
                                                              tmp_path):
    from tests.test_ray_cluster import _finish_driver, _start_driver, _trial_rows

    storage = Storage(sqlite_url)
    gpu_job = api.submit(storage, _train_job("auto"))
    cpu_job = api.submit(storage, _train_job("cpu"))
    for job in (gpu_job, cpu_job):
        _finish_driver(_start_driver(sqlite_url, gpu_cluster.address, job, tmp_path), job)
    on_gpu = _trial_rows(storage, gpu_job)
    on_cpu = _trial_rows(storage, cpu_job)
    assert [r.status for r in on_gpu + on_cpu] == ["completed"] * 8
    # Ray gave each `auto` task GPU 0 (half of it: parallelism 2 on one GPU) and the `cpu`
    # tasks none; torch here sees no real GPU, so both trained on the CPU
    assert all(r.worker.endswith(":gpu=0") for r in on_gpu), [r.worker for r in on_gpu]
    assert not any(":gpu=" in r.worker for r in on_cpu), [r.worker for r in on_cpu]
    storage.close()


# ---- on a real GPU ----------------------------------------------------------------------------
#: How far GPU and CPU validation accuracy may drift apart in 3 epochs: fake quantization
#: rounds, so one ulp of difference can move a value a whole step (measured on an H200: 7.2
#: points for quant, under 2 for the float spaces).
DRIFT = {"nb201": 5.0, "mbconv": 5.0, "hybrid": 5.0, "quant": 15.0}


@needs_cuda
@pytest.mark.parametrize("space_name", ["nb201", "quant", "mbconv", "hybrid"])
def test_training_on_the_gpu_agrees_with_the_cpu(space_name):
    from workers.evaluators.train import _fit_input
    from workers.training import evaluate_model

    space = get_space(space_name, **SPACES[space_name])
    arch = space.sample(np.random.default_rng(7))
    gpu_evaluator = get_evaluator("train", space, **TRAIN_ARGS, device="cuda")
    on_gpu = gpu_evaluator.evaluate(arch, "k")
    on_cpu = get_evaluator("train", space, **TRAIN_ARGS, device="cpu").evaluate(arch, "k")
    # same initialisation and batch order: only floating-point rounding differs
    assert abs(on_gpu.metrics["val_acc"] - on_cpu.metrics["val_acc"]) <= DRIFT[space_name]
    assert on_gpu.metrics["val_acc"] > 30 and on_cpu.metrics["val_acc"] > 30
    devices = {m.device: m.value for m in on_gpu.measurements}
    assert gpu_device_key() in devices and device_key() in devices
    assert 0 < devices[gpu_device_key()] < 1000
    if space_name == "quant":
        assert on_gpu.metrics["int8_val_acc"] > 20  # INT8 conversion of the GPU-trained net
    # the weights come back on the CPU, and there they score what the GPU reported
    state = torch.load(io.BytesIO(on_gpu.weights), weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())
    model = space.build(arch)
    model.load_state_dict(state)
    data = gpu_evaluator.data()
    _, val_acc = evaluate_model(_fit_input(model, data.input_shape, space.input_shape(arch)),
                                data.x_val, data.y_val)
    assert abs(val_acc - on_gpu.metrics["val_acc"]) <= 100 * 2 / len(data.y_val)


@needs_cuda
def test_deterministic_training_on_the_gpu_repeats_exactly():
    space = get_space("nb201", **NB201_DIGITS)
    arch = space.sample(np.random.default_rng(3))
    runs = [get_evaluator("train", space, **TRAIN_ARGS, device="cuda", deterministic=True,
                          measure_latency=False).evaluate(arch, "k") for _ in range(2)]
    first, second = ({k: v for k, v in r.metrics.items() if k != "train_time_s"} for r in runs)
    assert first == second
    assert runs[0].weights == runs[1].weights
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the trial


@needs_cuda
def test_a_deterministic_search_resumed_on_the_gpu_is_bit_identical(tmp_path):
    space = get_space("nb201")
    args = {"epochs": 3, "device": "cuda", "deterministic": True, "order": 1, **SEARCH_DATA}
    whole = get_search("darts", space, **args)
    full = whole.run(tmp_path / "whole")
    get_search("darts", space, **args).run(tmp_path / "cut", stop=lambda: True)
    resumed = get_search("darts", space, **args)
    outcome = resumed.run(tmp_path / "cut")
    assert outcome.resumed_from_epoch == 1
    for key, value in whole.alphas().items():
        assert np.array_equal(resumed.alphas()[key], value), key
    assert [space.key(a) for a in outcome.archs] == [space.key(a) for a in full.archs]


@needs_cuda
@pytest.mark.parametrize("name,space_name,kwargs", [
    ("darts", "nb201", {"order": 1}),
    ("darts", "nb201", {"order": 2}),
    ("pc-darts", "nb201", {}),
    ("rarts", "nb201", {}),
    ("fbnet", "nb201", {"max_latency_ms": 3.0, "latency_weight": 0.5,
                        "latency_table": {op: 1.0 for op in NB201_OPS if op != "none"}}),
    ("oneshot", "mbconv", {"population": 6, "generations": 2, "top_k": 2, "latency": "none",
                           "max_flops": 200_000, "bn_samples": 64}),
    ("oneshot", "hybrid", {"population": 6, "generations": 2, "top_k": 2, "latency": "none",
                           "bn_samples": 64}),
])
def test_weight_sharing_searches_train_on_the_gpu_and_resume(tmp_path, name, space_name,
                                                              kwargs):
    args = SPACES[space_name] if space_name != "nb201" else {}
    space = get_space(space_name, **args)
    search = get_search(name, space, epochs=2, device="cuda", **SEARCH_DATA, **kwargs)
    stopped = search.run(tmp_path, stop=lambda: True)
    assert search.device.type == "cuda" and not stopped.finished
    saved = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and "cuda" in saved["rng"]
    resumed = get_search(name, space, epochs=2, device="cuda", **SEARCH_DATA, **kwargs)
    outcome = resumed.run(tmp_path)
    assert outcome.resumed_from_epoch == 1 and outcome.finished
    assert outcome.archs and all(space.key(a) for a in outcome.archs)
    assert all(np.isfinite(r["train_loss"]) for r in outcome.history if "train_loss" in r)


@needs_cuda
def test_a_job_trains_on_the_gpu_and_ranks_by_gpu_latency(sqlite_url):
    from typer.testing import CliRunner

    from nas.cli import app

    storage = Storage(sqlite_url)
    spec = _train_job("auto") | {"executor": "local", "budget": {"trials": 6}}
    spec["evaluator_args"] = {**spec["evaluator_args"], "measure_latency": True}
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    assert [t.status for t in storage.trials.load(job)] == ["completed"] * 6
    key = gpu_device_key()
    result = CliRunner().invoke(app, ["--db", sqlite_url, "best", str(job), "--device", key,
                                      "--max-latency-ms", "1000", "--top", "10", "--json"])
    assert result.exit_code == 0, result.stdout
    rows = json.loads(result.stdout)["results"]
    assert len(rows) == 6 and all(r["device_source"] == "measured" for r in rows)
    assert resolve_device("x", "auto").type == "cuda"
    storage.close()
