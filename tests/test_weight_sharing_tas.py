"""The `tas` weight-sharing search (Transformable Architecture Search): channel-wise
interpolation, the expected FLOPs, the search meeting its FLOPs target, the distilled
network's exported weights, checkpoint/resume (stop and kill -9) and bad arguments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nas.export import split_weights
from search_spaces import get_space
from search_spaces.validation import ArgumentError, UnsupportedSpaceError
from tests.conftest import assert_same_outcome, kill_search_after_epoch, stop_then_resume
from workers.weight_sharing import TASSearch, get_search
from workers.weight_sharing.tas import TASNet, cwi, cwi_matrix

MBCONV_ARGS = {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24],
               "stage_strides": [2, 2], "stem_channels": 8, "head_channels": 32,
               "depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [2, 3, 4],
               "width_mults": [0.5, 1.0]}
#: The search of the resume tests (also run in a subprocess, so plain JSON values only):
#: 1 teacher epoch, 2 search epochs, 1 distillation epoch.
REFERENCE = {"seed": 2, "dataset": {"kind": "digits", "limit": 300}, "epochs": 2,
             "teacher_epochs": 1, "kd_epochs": 1, "batch_size": 32, "target_flops": 0.6,
             "flops_tolerance": 0.1, "arch_lr": 0.05}


def mbconv() -> Any:
    return get_space("mbconv", **MBCONV_ARGS)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run: its outcome, final weights and folder."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tas")
    search = get_search("tas", mbconv(), **REFERENCE)
    outcome = search.run(folder)
    return {"outcome": outcome, "search": search, "folder": folder,
            "student": {k: v.clone() for k, v in search.student.state_dict().items()},
            "searcher": {k: v.clone() for k, v in search.searcher.state_dict().items()}}


def assert_same_run(search: TASSearch, outcome: Any, reference: dict[str, Any]) -> None:
    for name, tensor in reference["searcher"].items():
        assert torch.equal(search.searcher.state_dict()[name], tensor), name
    for name, tensor in reference["student"].items():
        assert torch.equal(search.student.state_dict()[name], tensor), name
    assert_same_outcome(outcome, reference["outcome"])


# ---- the parts (unit) ----
def test_channel_wise_interpolation_averages_channel_windows() -> None:
    matrix = cwi_matrix(3, 6)
    assert torch.allclose(matrix.sum(1), torch.ones(6))  # every output is a mean
    x = torch.arange(3.0).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = cwi(x, 6)
    assert out.shape == (2, 6, 2, 2)
    assert out[0, :, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]  # 3 -> 6 repeats
    assert cwi(x, 3) is x
    odd = cwi(torch.tensor([0.0, 1.0]).view(1, 2, 1, 1), 3)[0, :, 0, 0].tolist()
    assert odd == [0.0, 0.5, 1.0]  # the middle channel straddles both windows


def test_expected_flops_is_exact_at_one_hot_logits() -> None:
    space = mbconv()
    search = get_search("tas", space, target_flops=0.6)
    torch.manual_seed(0)
    net = TASNet(space.build(search.arch), search.blocks, search.depth_choices)
    for trial in range(4):
        with torch.no_grad():
            for p in net.arch_parameters():
                p.copy_(torch.full_like(p, -50.0))
                p[(trial * 7 + len(p)) % len(p)] = 50.0
        arch = search._arch_of(*net.argmax())
        assert float(net.expected_flops(search.fixed_flops).detach()) == pytest.approx(
            space.flops(arch), rel=1e-5)
    assert search.full_flops == space.flops(space.max_arch())
    assert search.target_flops == pytest.approx(0.6 * search.full_flops)


# ---- the search (integration) ----
@pytest.mark.integration
def test_search_meets_its_flops_target_and_distils(reference: dict[str, Any]) -> None:
    space, outcome = mbconv(), reference["outcome"]
    assert outcome.finished and [r["phase"] for r in outcome.history] == \
        ["teacher", "search", "search", "distill"]
    (arch,), (metrics,) = outcome.archs, outcome.metrics
    assert space.validate(arch) == arch
    target, tolerance = metrics["target_flops"], REFERENCE["flops_tolerance"]
    assert target * (1 - tolerance) <= metrics["flops"] <= target
    assert metrics["flops"] == space.flops(arch) and metrics["params"] == space.params(arch)
    assert metrics["flops_ratio"] == pytest.approx(metrics["flops"] / space.flops(
        space.max_arch()))
    search = [r for r in outcome.history if r["phase"] == "search"]
    assert search[0]["tau"] == 10.0 and search[-1]["tau"] == pytest.approx(0.1)
    assert metrics["distilled_acc"] > 30.0  # well above chance (10%) after 4 tiny epochs


@pytest.mark.integration
def test_exported_weights_reload_to_the_same_outputs(reference: dict[str, Any]) -> None:
    space, outcome, folder = mbconv(), reference["outcome"], reference["folder"]
    search = reference["search"]
    index = json.loads((folder / "subnets.json").read_text())
    assert [e["key"] for e in index] == [space.key(outcome.archs[0])]
    state, normalisation = split_weights((folder / "subnet-1.pt").read_bytes())
    assert normalisation == search.data.normalisation
    net = space.build(outcome.archs[0])
    net.load_state_dict(state)
    net.eval()
    exported = search.finalised(search.student)  # BN statistics recalibrated
    x = torch.from_numpy(search.data.x_val)
    with torch.no_grad():
        assert torch.equal(net(x), exported(x))
        accuracy = 100.0 * float((net(x).argmax(1).numpy() == search.data.y_val).mean())
    assert accuracy == pytest.approx(outcome.metrics[0]["distilled_acc"])


@pytest.mark.integration
def test_stop_mid_search_and_resume_equals_an_uninterrupted_run(reference: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    first, search, outcome = stop_then_resume(
        tmp_path, lambda: get_search("tas", mbconv(), **REFERENCE), epochs=2)
    assert [r["phase"] for r in first.history] == ["teacher", "search"]
    assert_same_run(search, outcome, reference)


@pytest.mark.system
def test_kill_9_during_the_search_then_resume_equals_an_uninterrupted_run(
        reference: dict[str, Any], tmp_path: Path) -> None:
    kill_search_after_epoch(tmp_path, "tas", "mbconv", MBCONV_ARGS, REFERENCE,
                            epoch=2)
    search = get_search("tas", mbconv(), **REFERENCE)
    outcome = search.run(tmp_path)
    assert outcome.resumed_from_epoch == 2
    assert_same_run(search, outcome, reference)


@pytest.mark.integration
def test_resume_with_other_settings_is_refused(reference: dict[str, Any]) -> None:
    other = get_search("tas", mbconv(), **{**REFERENCE, "target_flops": 0.5})
    with pytest.raises(ValueError, match="another search"):
        other.run(reference["folder"])


@pytest.mark.integration
def test_tas_strategy_passes_check_strategy_once_searched(reference: dict[str, Any]) -> None:
    from nas.strategies import check_strategy, get_strategy
    from workers.weight_sharing.task import SearchResult

    space, outcome = mbconv(), reference["outcome"]
    result = SearchResult([space.key(a) for a in outcome.archs], outcome.archs,
                          outcome.metrics, outcome.history)

    def factory(seed: int) -> Any:
        strategy = get_strategy("tas", space, seed=seed, target_flops=0.6)
        strategy.set_outcome(result)
        return strategy

    check_strategy(factory, trials=20)


# ---- bad arguments (unit) ----
@pytest.mark.parametrize("field, value", [
    ("target_flops", 0), ("target_flops", "half"), ("target_flops", 10), ("target_flops", 1e9),
    ("flops_tolerance", 0.9), ("flops_weight", -1), ("tau_max", 0), ("tau_min", 20.0),
    ("teacher_epochs", 0), ("kd_epochs", 0), ("kd_temperature", 0), ("kd_alpha", 1.5),
    ("kd_init", "random"), ("arch", "r8|nonsense"), ("arch", {"width": 1.0}), ("lr", 0),
    ("momentum", 1.0), ("arch_lr", -1), ("epochs", 0),
])
def test_bad_arguments_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ArgumentError, match=rf"^{field} must") as info:
        get_search("tas", mbconv(), **{field: value})
    assert info.value.field == field


def test_other_spaces_and_unknown_arguments_are_refused() -> None:
    with pytest.raises(UnsupportedSpaceError, match="supports the spaces mbconv"):
        get_search("tas", get_space("nb201"))
    with pytest.raises(TypeError):
        get_search("tas", mbconv(), target_flop=0.5)


def test_bad_arguments_fail_at_submit() -> None:
    from nas.errors import SpecError
    from nas.spec import parse_spec

    spec = {"name": "tas-test", "space": "mbconv", "space_args": MBCONV_ARGS,
            "strategy": "tas", "strategy_args": {"target_flops": 1.5e9},
            "evaluator": "proxy", "evaluator_args": {"proxies": ["params"]},
            "objectives": [{"metric": "score", "mode": "max"}], "budget": {"trials": 1}}
    with pytest.raises(SpecError, match="strategy_args.target_flops"):
        parse_spec(spec)


@pytest.mark.integration
def test_tas_job_exports_the_distilled_network(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A tas job through the driver (proxy evaluator, no training of trials): its derived
    network's trial carries the search metrics and `nas export` hands over the distilled
    weights."""
    from nas import api
    from nas.export import export_trial
    from nas.storage import Storage

    monkeypatch.setenv("NAS_ARTIFACTS", str(tmp_path / "artifacts"))
    space_args = {**MBCONV_ARGS, "num_classes": 10}
    storage = Storage("sqlite://")
    job = api.submit(storage, {
        "name": "tas-job", "space": "mbconv", "space_args": space_args, "strategy": "tas",
        "strategy_args": {"epochs": 1, "teacher_epochs": 1, "kd_epochs": 1, "batch_size": 32,
                          "dataset": {"kind": "digits", "limit": 200}, "target_flops": 0.6},
        "evaluator": "proxy", "evaluator_args": {"proxies": ["params"]},
        "objectives": [{"metric": "score", "mode": "max"}], "budget": {"trials": 1},
        "executor": "local", "parallelism": 1, "batch_size": 1, "seed": 1})
    assert api.run(storage, job) == "completed"
    (trial,) = storage.trials.load(job)
    space = get_space("mbconv", **space_args)
    assert trial.metrics["search.flops"] == space.flops(space.from_key(trial.key))
    assert trial.metrics["search.distilled"] == 1.0
    state, normalisation = split_weights(storage.trials.weights(job, trial.number))
    target = tmp_path / "pruned.pt"
    export_trial(storage, job, trial.number, "torchscript", str(target))
    model = torch.jit.load(str(target))
    reference = space.build(space.from_key(trial.key))
    reference.load_state_dict(state)
    reference.eval()
    mean, std = (torch.tensor(normalisation[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    x = torch.rand(3, 1, 8, 8) * 16
    with torch.no_grad():
        assert torch.allclose(model(x), reference((x - mean) / std), atol=1e-4)
