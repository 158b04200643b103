"""The `oneshot` weight-sharing search: sandwich training, complexity-aware sampling, the
hybrid supernet, the constrained evolutionary search, exported weights, checkpoint/resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nas.export import split_weights
from search_spaces import get_space
from search_spaces.validation import ArgumentError, UnsupportedSpaceError
from tests.conftest import assert_same_outcome, kill_search_after_epoch, stop_then_resume
from workers.weight_sharing import OneShotSearch, get_search
from workers.weight_sharing.hybrid_supernet import HybridSupernet, extreme_archs

pytestmark = pytest.mark.integration

MBCONV_ARGS = {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24],
               "stage_strides": [2, 2], "stem_channels": 8, "head_channels": 32,
               "depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [2, 4],
               "width_mults": [0.5, 1.0], "resolutions": [6, 8]}
HYBRID_ARGS = {"input_channels": 1, "input_size": 8, "blocks": 3, "widths": [[8, 16], [16, 24]],
               "mlp_ratio": 2, "stem_stride": 2}
MAX_FLOPS = 200_000
#: The search of the resume tests (also run in a subprocess, so plain JSON values only).
REFERENCE = {"seed": 3, "dataset": {"kind": "digits", "limit": 300}, "epochs": 3,
             "batch_size": 32, "complexity_aware": True, "population": 8, "generations": 2,
             "top_k": 3, "latency": "none", "max_flops": MAX_FLOPS, "bn_samples": 128}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def mbconv() -> Any:
    return get_space("mbconv", **MBCONV_ARGS)


def hybrid(**overrides: Any) -> Any:
    return get_space("hybrid", **{**HYBRID_ARGS, **overrides})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run: its outcome, final supernet weights and folder."""
    folder = tmp_path_factory.mktemp("reference")
    search = get_search("oneshot", mbconv(), **REFERENCE)
    outcome = search.run(folder)
    return {"outcome": outcome, "weights": search.supernet.state_dict(), "search": search,
            "folder": folder}


def assert_same_run(search: OneShotSearch, outcome: Any, reference: dict[str, Any]) -> None:
    for name, tensor in reference["weights"].items():
        assert torch.equal(search.supernet.state_dict()[name], tensor), name
    assert search.sample_log == reference["search"].sample_log
    assert_same_outcome(outcome, reference["outcome"])


# ---- training and derivation ----
def test_mbconv_derives_valid_archs_under_the_flops_constraint(reference: dict[str, Any]) -> None:
    space, outcome = mbconv(), reference["outcome"]
    assert outcome.finished and len(outcome.history) == 3
    assert 1 <= len(outcome.archs) <= REFERENCE["top_k"]
    accuracies = [m["supernet_acc"] for m in outcome.metrics]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[0] > 20.0  # well above chance (10%) after 3 tiny epochs
    for arch, metrics in zip(outcome.archs, outcome.metrics, strict=True):
        assert space.validate(arch) == arch
        assert space.flops(arch) <= MAX_FLOPS
        assert metrics["flops"] == space.flops(arch)
        assert metrics["params"] == space.params(arch)
        assert "latency_ms" not in metrics  # latency: none
    # the largest subnet's inherited accuracy improves as the supernet trains
    assert outcome.history[-1]["val_acc_largest"] > outcome.history[0]["val_acc_largest"] - 5


def test_exported_weights_reproduce_the_supernet_accuracy(reference: dict[str, Any]) -> None:
    space, outcome, folder = mbconv(), reference["outcome"], reference["folder"]
    data = reference["search"].data
    index = json.loads((folder / "subnets.json").read_text())
    assert [e["key"] for e in index] == [space.key(a) for a in outcome.archs]
    for rank, (arch, metrics) in enumerate(zip(outcome.archs, outcome.metrics, strict=True), 1):
        net = space.build(arch)
        state, normalisation = split_weights((folder / f"subnet-{rank}.pt").read_bytes())
        assert normalisation == data.normalisation  # what the supernet trained with
        net.load_state_dict(state)
        net.eval()
        x = torch.from_numpy(data.x_val)
        if arch["resolution"] != 8:
            x = torch.nn.functional.interpolate(x, size=space.input_shape(arch)[1:],
                                                mode="bilinear")
        with torch.no_grad():
            accuracy = 100.0 * float((net(x).argmax(1).numpy() == data.y_val).mean())
        assert accuracy == pytest.approx(metrics["supernet_acc"], abs=1e-6)
        exported = reference["search"].export_subnet(arch)
        restored = get_search("oneshot", mbconv(), **REFERENCE)
        assert restored.restore(folder) == 3
        with torch.no_grad():
            assert torch.allclose(exported(x), net(x), atol=1e-5)
            assert torch.allclose(restored.export_subnet(arch)(x), net(x), atol=1e-5)


def test_sandwich_rule_runs_largest_and_smallest_every_step(reference: dict[str, Any]) -> None:
    space, search = mbconv(), reference["search"]
    steps = len(search.sample_log)
    assert steps == 3 * (300 // 32 + 1)  # 3 epochs of 10 batches (the last one of 12)
    largest, smallest = space.key(space.max_arch()), space.key(space.min_arch())
    for step in search.sample_log:
        assert step["roles"] == ["largest", "smallest", "random", "random"]
        assert step["keys"][:2] == [largest, smallest]
        assert max(step["flops"]) == step["flops"][0] and min(step["flops"]) == step["flops"][1]
    assert len({k for step in search.sample_log for k in step["keys"][2:]}) > 10


def test_hybrid_search_with_measured_latency(tmp_path: Path) -> None:
    space = hybrid()
    limit = 50.0
    search = get_search("oneshot", space, seed=0, dataset={"kind": "digits", "limit": 200},
                        epochs=2, batch_size=32, sandwich=1, population=6, generations=1,
                        top_k=2, max_latency_ms=limit, max_params=15_000, latency_repeats=3)
    outcome = search.run(tmp_path)
    largest, smallest = extreme_archs(space)
    assert all(s["keys"][:2] == [space.key(largest), space.key(smallest)]
               for s in search.sample_log)
    assert len(outcome.archs) == 2
    for arch, metrics in zip(outcome.archs, outcome.metrics, strict=True):
        assert space.validate(arch) == arch
        assert space.params(arch) <= 15_000
        assert 0.0 < metrics["latency_ms"] <= limit
    net = space.build(outcome.archs[0])
    net.load_state_dict(split_weights((tmp_path / "subnet-1.pt").read_bytes())[0])


def test_hybrid_extreme_archs_bound_the_flops() -> None:
    space = hybrid(blocks=4, widths=[[8, 16], [16, 24], [24, 32]])
    largest, smallest = extreme_archs(space)
    flops = [space.flops(a) for a in space.enumerate()]
    assert space.flops(largest) == max(flops) and space.flops(smallest) == min(flops)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_hybrid_extract_equals_the_supernet(mode: str) -> None:
    space = hybrid(blocks=4, widths=[[8, 16], [16, 24], [24, 32]], stem_stride=1)
    supernet = HybridSupernet(space)
    rng = np.random.default_rng(0)
    x = torch.randn(6, 1, 8, 8)
    supernet.train()
    with torch.no_grad():  # move the shared BN statistics away from their initial values
        for _ in range(4):
            supernet(x, space.sample(rng))
    supernet.train(mode == "train")
    archs = [*extreme_archs(space)] + [space.sample(rng) for _ in range(12)]
    kinds = set()
    for arch in archs:
        net = supernet.extract(arch)
        assert isinstance(net, type(space.build(arch)))
        assert sum(p.numel() for p in net.parameters()) == space.params(arch)
        out_super, out_net = supernet(x, arch), net(x)
        assert torch.allclose(out_super, out_net, atol=1e-5), space.key(arch)
        kinds.update(arch["blocks"])
    assert kinds == {"basic", "bottleneck", "transformer"}


# ---- complexity-aware sampling ----
def _random_flops(search: OneShotSearch) -> list[int]:
    return [f for step in search.sample_log
            for r, f in zip(step["roles"], step["flops"], strict=True) if r == "random"]


@pytest.mark.parametrize("aware", [True, False])
def test_complexity_aware_sampling_bounds_consecutive_flops_gaps(aware: bool,
                                                                   tmp_path: Path) -> None:
    gap = 0.3
    search = get_search("oneshot", mbconv(), seed=1, dataset={"kind": "digits", "limit": 120},
                        epochs=1, batch_size=8, sandwich=3, complexity_aware=aware,
                        max_flops_gap=gap, flops_candidates=40, population=2, generations=0,
                        top_k=1, latency="none")
    search.run(tmp_path)
    flops = _random_flops(search)
    assert len(flops) == 3 * 15
    gaps = [abs(b - a) / a for a, b in zip(flops[:-1], flops[1:], strict=True)]
    if aware:
        assert max(gaps) <= gap
        assert len(set(flops)) > 5  # it still explores
    else:
        assert sum(g > gap for g in gaps) > len(gaps) // 3
    assert search.history[0]["max_flops_gap"] == pytest.approx(max(gaps))


# ---- checkpoint / resume ----
def test_stop_and_resume_equals_an_uninterrupted_run(reference: dict[str, Any],
                                                     tmp_path: Path) -> None:
    _, search, outcome = stop_then_resume(
        tmp_path, lambda: get_search("oneshot", mbconv(), **REFERENCE), epochs=1)
    assert_same_run(search, outcome, reference)
    # a finished folder: run again derives the same (the evolution is deterministic)
    again = get_search("oneshot", mbconv(), **REFERENCE).run(tmp_path)
    assert again.resumed_from_epoch == 3 and again.archs == reference["outcome"].archs


@pytest.mark.system
def test_kill_9_then_resume_equals_an_uninterrupted_run(reference: dict[str, Any],
                                                        tmp_path: Path) -> None:
    kill_search_after_epoch(tmp_path, "oneshot", "mbconv", MBCONV_ARGS, REFERENCE,
                            epoch=1)
    search = get_search("oneshot", mbconv(), **REFERENCE)
    outcome = search.run(tmp_path)
    assert outcome.resumed_from_epoch == 1
    assert_same_run(search, outcome, reference)


def test_resume_with_other_settings_is_refused(reference: dict[str, Any]) -> None:
    other = get_search("oneshot", mbconv(), **{**REFERENCE, "sandwich": 3})
    with pytest.raises(ValueError, match="another search"):
        other.run(reference["folder"])


# ---- bad arguments ----
@pytest.mark.parametrize("field, value", [
    ("sandwich", -1), ("sandwich", 1.5), ("complexity_aware", "yes"), ("max_flops_gap", 0),
    ("flops_candidates", 0), ("lr", -0.1), ("momentum", 1.0), ("weight_decay", -1),
    ("population", 1), ("generations", -1), ("top_k", 0), ("bn_samples", -5),
    ("max_flops", 0), ("max_params", "big"), ("max_latency_ms", float("nan")),
    ("latency", "predicted"), ("latency_repeats", 1), ("grad_clip", 0),
])
def test_bad_arguments_name_the_field(field: str, value: Any) -> None:
    # the argument's own name: the spec alone adds strategy_args.
    with pytest.raises(ArgumentError, match=rf"^{field} must be") as info:
        get_search("oneshot", mbconv(), **{field: value})
    assert info.value.field == field


def test_bad_combinations_and_spaces_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match=r"^latency must be"):
        get_search("oneshot", mbconv(), latency="none", max_latency_ms=5.0)
    with pytest.raises(UnsupportedSpaceError, match="supports the spaces mbconv, hybrid"):
        get_search("oneshot", get_space("nb201"))
    with pytest.raises(TypeError):
        get_search("oneshot", mbconv(), populaton=10)
    with pytest.raises(ArgumentError, match=r"^dataset has inputs of shape"):
        get_search("oneshot", get_space("mbconv"), epochs=1).run(tmp_path)
