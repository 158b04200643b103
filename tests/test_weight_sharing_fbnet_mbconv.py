"""FBNet as published on the layer-wise `mbconv` space: tiny real runs on `digits`, and
checkpoint/resume (stop, and kill -9) equal to an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search_spaces import get_space
from search_spaces.validation import ArgumentError
from tests.conftest import assert_same_outcome, kill_search_after_epoch, stop_then_resume
from workers.weight_sharing import get_search
from workers.weight_sharing.fbnet_mbconv import (
    FBNetMBConvSearch,
    arch_of,
    layer_choices,
    picks_of,
    predict_mbconv,
)

#: 2 stages x 2 layers; layer 1 of each stage may be `skip`; 4 blocks per layer
MBCONV = {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24],
          "stage_strides": [2, 2], "stem_channels": 8, "head_channels": 32, "depths": [1, 2],
          "kernel_sizes": [3, 5], "expand_ratios": [2, 4], "width_mults": [1.0]}
TINY = {"dataset": {"kind": "digits", "limit": 128}, "batch_size": 32, "seed": 3}
#: a table where bigger blocks cost much more: block i of a layer costs 1 + 3 i ms, skip 0
TABLE = {"skeleton_ms": 1.0, "layers_ms": [[1.0 + 3 * i for i in range(len(c) - (c[-1] == "skip"))]
                                           + ([0.0] if c[-1] == "skip" else [])
                                           for c in layer_choices(get_space("mbconv", **MBCONV))]}
#: The search of the resume tests (also run in a subprocess: plain JSON values only).
RESUME = {**TINY, "epochs": 2, "max_latency_ms": 8.0, "latency_table": TABLE, "top": 2}

torch.set_num_threads(1)


def _space():
    return get_space("mbconv", **MBCONV)


def test_layer_view_round_trips():
    space = _space()
    rng = np.random.default_rng(0)
    for _ in range(30):
        arch = space.sample(rng)
        assert arch_of(space, picks_of(space, arch)) == space.validate(arch)
    assert predict_mbconv(TABLE, space, space.min_arch()) == 1.0 + 1.0 + 0.0 + 1.0 + 0.0


@pytest.mark.integration
def test_fbnet_on_mbconv_with_a_measured_table_meets_its_budget_here(tmp_path):
    space = _space()
    search = get_search("fbnet", space, epochs=1, max_latency_ms=50.0, top=3, samples=12,
                        **TINY)
    assert isinstance(search, FBNetMBConvSearch)
    outcome = search.run(tmp_path)
    lut = search.lut
    assert len(lut["layers_ms"]) == 4 and lut["scale"] > 0 and lut["skeleton_ms"] > 0
    assert outcome.finished and 1 <= len(outcome.archs) <= 3
    sampled = {space.key(a): s for a, s in search.candidates()}
    scores = [m["alpha_log_prob"] for m in outcome.metrics]
    assert scores == sorted(scores, reverse=True)
    for arch, m in zip(outcome.archs, outcome.metrics, strict=True):
        assert space.validate(arch) == arch and space.key(arch) in sampled
        assert m["alpha_log_prob"] == sampled[space.key(arch)]
        assert m["measured_latency_ms"] <= 50.0 and m["meets_budget"] == 1.0
        assert m["table_latency_ms"] == pytest.approx(search.table_latency(arch))
    assert outcome.history[-1]["expected_latency_ms"] > lut["skeleton_ms"]


@pytest.mark.integration
def test_the_loss_uses_the_table(tmp_path):
    """beta 0 leaves CE * alpha (no latency gradient); a larger beta lowers E[LAT]; a tighter
    budget derives a faster architecture."""
    space = _space()
    kwargs = {**TINY, "epochs": 1, "latency_table": TABLE, "arch_lr": 0.1, "samples": 30}
    runs = {}
    for beta in (0.0, 3.0):
        search = get_search("fbnet", space, max_latency_ms=100.0, latency_beta=beta, **kwargs)
        search.run(tmp_path / str(beta))
        runs[beta] = float(search.expected_latency().detach())
    assert runs[3.0] < runs[0.0] - 0.1
    loose = get_search("fbnet", space, max_latency_ms=100.0, **kwargs).run(tmp_path / "loose")
    tight = get_search("fbnet", space, max_latency_ms=5.0, **kwargs).run(tmp_path / "tight")
    assert tight.metrics[0]["table_latency_ms"] <= 5.0 and tight.metrics[0]["meets_budget"]
    assert tight.metrics[0]["table_latency_ms"] < loose.metrics[0]["table_latency_ms"]
    # only the mode sampled, a budget only the smallest arch meets (1 + 1 + 0 + 1 + 0 ms):
    # the greedy most probable arch under the budget is derived
    search = get_search("fbnet", space, max_latency_ms=3.0, **{**kwargs, "samples": 0})
    least = search.run(tmp_path / "least")
    assert least.metrics[0]["table_latency_ms"] == 3.0 and least.metrics[0]["meets_budget"]
    assert space.key(least.archs[0]) == space.key(space.min_arch())
    assert space.key(search.current_arch()) != space.key(space.min_arch())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the resume tests' search: the search and its outcome."""
    whole = get_search("fbnet", _space(), **RESUME)
    return whole, whole.run(tmp_path_factory.mktemp("fbnet-mbconv"))


def assert_same_run(resumed, outcome, reference):
    whole, full = reference
    state = resumed.net.state_dict()
    for name, tensor in whole.net.state_dict().items():
        assert torch.equal(state[name], tensor), name
    for key, value in whole.alphas().items():
        assert np.array_equal(resumed.alphas()[key], value), key
    assert_same_outcome(outcome, full)  # archs, metrics, history (seconds aside)


@pytest.mark.integration
def test_resume_after_stop_is_bit_identical(reference, tmp_path):
    _, resumed, outcome = stop_then_resume(
        tmp_path, lambda: get_search("fbnet", _space(), **RESUME), epochs=1)
    assert_same_run(resumed, outcome, reference)


@pytest.mark.system
def test_kill_9_after_an_epoch_then_resume_is_bit_identical(reference, tmp_path):
    kill_search_after_epoch(tmp_path, "fbnet", "mbconv", MBCONV, RESUME, epoch=1)
    resumed = get_search("fbnet", _space(), **RESUME)
    outcome = resumed.run(tmp_path)
    assert outcome.resumed_from_epoch == 1 and outcome.finished
    assert_same_run(resumed, outcome, reference)


@pytest.mark.parametrize("kwargs,field", [
    ({}, "max_latency_ms"),
    ({"max_latency_ms": -1.0}, "max_latency_ms"),
    ({"max_latency_ms": 5.0, "latency_alpha": 0}, "latency_alpha"),
    ({"max_latency_ms": 5.0, "latency_beta": "big"}, "latency_beta"),
    ({"max_latency_ms": 5.0, "samples": -1}, "samples"),
    ({"max_latency_ms": 5.0, "latency_table": {"skeleton_ms": 1.0, "layers_ms": [[1.0]]}},
     "latency_table"),
    ({"max_latency_ms": 5.0, "latency_table": {"k3e2": 1.0}}, "latency_table"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ArgumentError, match=rf"^{field}\b"):
        get_search("fbnet", _space(), **kwargs)


def test_arguments_of_the_other_space_are_refused_in_one_line():
    from search_spaces.validation import check_init_chain
    from workers.weight_sharing import search_class

    space = _space()
    for field, value in (("latency_weight", 0.5), ("channels", 4)):
        with pytest.raises(ArgumentError, match=f"^{field} is for nb201"):
            get_search("fbnet", space, max_latency_ms=5.0, **{field: value})
    with pytest.raises(ArgumentError, match="^samples is for fbnet on mbconv"):
        get_search("fbnet", get_space("nb201"), max_latency_ms=5.0, samples=3)
    # the service's argument check knows the mbconv arguments (and refuses unknown ones)
    check_init_chain(search_class("fbnet"), space, max_latency_ms=5.0, latency_alpha=0.3,
                     latency_beta=1.0, samples=4)
    with pytest.raises(ArgumentError, match="^latency_gamma"):
        check_init_chain(search_class("fbnet"), space, max_latency_ms=5.0, latency_gamma=1)
