"""Issue 19's `oneshot` options: ElasticViT's sampler (`sampler: elasticvit`) and the balanced
mixture of supernets (`supernets: K`). Unit: the level walk stays adjacent, the banks keep the
best, the mixture's assignment is balanced, bad arguments. Integration: each option trains a
tiny supernet and resumes bit-identically after a stop; system: and after kill -9."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from search_spaces import get_space
from search_spaces.validation import ArgumentError
from tests.conftest import assert_same_outcome, kill_search_after_epoch, stop_then_resume
from workers.weight_sharing import get_search
from workers.weight_sharing.hybrid_supernet import HybridSupernet
from workers.weight_sharing.oneshot_sampling import (
    ElasticViTSampler,
    SupernetMixture,
    pooling_config,
    pooling_configs,
    sinkhorn,
)

MBCONV_ARGS = {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24],
               "stage_strides": [2, 2], "stem_channels": 8, "head_channels": 32,
               "depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [2, 4],
               "width_mults": [0.5, 1.0], "resolutions": [6, 8]}
HYBRID_ARGS = {"input_channels": 1, "input_size": 8, "blocks": 4,
               "widths": [[8, 16], [16, 24], [24, 32]], "mlp_ratio": 2, "stem_stride": 1}
RUN = {"seed": 5, "dataset": {"kind": "digits", "limit": 200}, "epochs": 2, "batch_size": 50,
       "population": 4, "generations": 1, "top_k": 2, "latency": "none", "bn_samples": 64}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def mbconv() -> Any:
    return get_space("mbconv", **MBCONV_ARGS)


# ---- unit: the ElasticViT sampler ------------------------------------------------------------
def test_elasticvit_walk_stays_in_adjacent_flops_levels() -> None:
    space = mbconv()
    sampler = ElasticViTSampler(space, space.flops, levels=6, bank_size=3, bank_prob=0.5,
                                seed=0)
    assert sampler.levels >= 4 and sampler.edges == sorted(sampler.edges)
    rng = np.random.default_rng(1)
    targets, landed = [], 0
    for step in range(300):
        arch, target = sampler.draw(rng)
        targets.append(target)
        landed += sampler.level_of(arch) == target
        sampler.update(arch, loss=float(step % 7))
    steps = np.abs(np.diff(targets))
    assert steps.max() <= 1  # the walk: the same level or a neighbour, never further
    assert (steps == 1).sum() > 50 and len(set(targets)) == sampler.levels  # it moves, all levels
    assert landed == len(targets)  # every subnet lies in its target level (levels are not empty)
    for bank in sampler.banks:  # each bank: its level's best (lowest-loss) subnets, sorted
        assert len(bank) <= 3 and [e[0] for e in bank] == sorted(e[0] for e in bank)
        assert all(sampler.level_of(e[2]) == level for level, b in enumerate(sampler.banks)
                   for e in b)


def test_elasticvit_bank_draws_prefer_the_measured_best() -> None:
    space = mbconv()
    sampler = ElasticViTSampler(space, space.flops, levels=4, bank_size=2, bank_prob=1.0, seed=0)
    rng = np.random.default_rng(2)
    arch, level = sampler.draw(rng)  # empty bank: a fresh draw
    sampler.update(arch, loss=0.1)
    sampler.level = level
    assert space.key(sampler.draw(rng)[0]) in {e[1] for b in sampler.banks for e in b} \
        or sampler.level != level  # bank_prob 1: from the bank when the walk stays


# ---- unit: the balanced mixture --------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3])
def test_mixture_assignment_is_balanced_whatever_the_losses(k: int) -> None:
    space = mbconv()
    configs = pooling_configs(space)
    assert len(configs) == 8 and pooling_config(space, space.max_arch()) in configs
    mixture = SupernetMixture(space, [space.supernet() for _ in range(k)])
    rng = np.random.default_rng(k)
    # skewed losses: supernet 0 looks best for every configuration
    losses = rng.random((8, k)) + np.linspace(0, 1, k)
    mixture.loss_ema.copy_(torch.from_numpy(losses))
    mixture.visits.fill_(1)
    soft = mixture.probabilities()
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(soft.sum(axis=0), 8 / k, atol=1e-3)  # balanced soft shares
    counts = np.bincount(mixture.assignment(), minlength=k)
    assert counts.min() == 8 // k and counts.max() == -(-8 // k)  # balanced hard assignment
    # the hard assignment follows the losses: each configuration's best supernet when free
    best = np.argmin(losses, axis=1)
    assert np.mean(np.array(mixture.assignment()) == best) >= 0.5


def test_sinkhorn_keeps_a_preference_it_can_balance() -> None:
    scores = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, 0.0], [0.0, 4.0]])
    p = sinkhorn(scores)
    assert (p.argmax(axis=1) == [0, 1, 0, 1]).all()


def test_hybrid_pooling_configs_are_the_downsample_positions() -> None:
    space = get_space("hybrid", **HYBRID_ARGS)
    configs = pooling_configs(space)
    assert len(configs) == len(set(configs)) >= 2
    mixture = SupernetMixture(space, [HybridSupernet(space) for _ in range(2)])
    arch = space.sample(np.random.default_rng(0))
    assert mixture.config_index(arch) == configs.index(tuple(arch["downsample"]))


# ---- bad arguments -------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("sampler", "greedy"), ("flops_buckets", 1), ("bank_size", 0), ("bank_prob", 1.5),
    ("bank_prob", True), ("supernets", 0), ("supernets", 9),
])
def test_bad_arguments_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ArgumentError, match=rf"^{field} must be") as info:
        get_search("oneshot", mbconv(), **{field: value})
    assert info.value.field == field


def test_elasticvit_replaces_complexity_aware() -> None:
    with pytest.raises(ArgumentError, match=r"^sampler must be 'default' when"):
        get_search("oneshot", mbconv(), sampler="elasticvit", complexity_aware=True)


# ---- integration: train, resume bit-identically ----------------------------------------------
def _same(a: Any, b: Any, outcome_a: Any, outcome_b: Any) -> None:
    for name, tensor in a.supernet.state_dict().items():
        assert torch.equal(b.supernet.state_dict()[name], tensor), name
    assert a.sample_log == b.sample_log
    assert outcome_a.archs == outcome_b.archs and outcome_a.metrics == outcome_b.metrics


@pytest.fixture(scope="module", params=[{"sampler": "elasticvit", "flops_buckets": 4},
                                        {"supernets": 2}], ids=["elasticvit", "mixture"])
def uninterrupted(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any, Any]:
    """(the option, the search, its outcome) of an uninterrupted run with each option."""
    torch.set_num_threads(1)
    options = request.param
    search = get_search("oneshot", mbconv(), **RUN, **options)
    return options, search, search.run(tmp_path_factory.mktemp("full"))


@pytest.mark.integration
def test_option_trains_and_resumes_bit_identically(
        uninterrupted: tuple[dict[str, Any], Any, Any], tmp_path: Path) -> None:
    options, full, outcome = uninterrupted
    assert outcome.finished and outcome.metrics[0]["supernet_acc"] > 15.0  # above chance
    _, resumed, again = stop_then_resume(
        tmp_path, lambda: get_search("oneshot", mbconv(), **RUN, **options), epochs=1)
    _same(full, resumed, outcome, again)
    log = full.sample_log
    if "sampler" in options:
        levels = [lv for step in log for lv in step["levels"]]
        assert max(np.abs(np.diff(levels))) <= 1 and len(set(levels)) > 1
        assert full._elastic.state() == resumed._elastic.state()
    else:
        members = [m for step in log for m in step["members"]]
        assert set(members) == {0, 1}  # both supernets train
        mixture = full.supernet
        assert sorted(np.bincount(mixture.assignment(), minlength=2)) == [4, 4]
        assert int(mixture.visits.sum()) == len(members)
        arch = outcome.archs[0]  # the exported subnet is its assigned supernet's slice
        x = torch.from_numpy(full.data.x_val[:16])
        x = full._resize(x, arch)
        member = mixture.members[mixture.member_of(arch)]
        member.eval()
        with torch.no_grad():
            assert torch.allclose(member.extract(arch).eval()(x), member(x, arch), atol=1e-5)


@pytest.mark.system
def test_option_survives_kill_9_bit_identically(
        uninterrupted: tuple[dict[str, Any], Any, Any], tmp_path: Path) -> None:
    """kill -9 once epoch 1 is checkpointed, then resume: the sampler's levels and banks or
    the mixture's assignment statistics come back with the weights."""
    options, full, outcome = uninterrupted
    kill_search_after_epoch(tmp_path, "oneshot", "mbconv", MBCONV_ARGS, {**RUN, **options},
                            epoch=1)
    resumed = get_search("oneshot", mbconv(), **RUN, **options)
    again = resumed.run(tmp_path)
    assert again.finished and again.resumed_from_epoch == 1
    _same(full, resumed, outcome, again)
    assert_same_outcome(again, outcome)
    if "sampler" in options:
        assert full._elastic.state() == resumed._elastic.state()
    else:
        for name in ("loss_ema", "visits"):
            assert torch.equal(getattr(full.supernet, name), getattr(resumed.supernet, name))
        assert full.supernet.assignment() == resumed.supernet.assignment()


@pytest.mark.integration
def test_hybrid_mixture_with_elasticvit_runs(tmp_path: Path) -> None:
    space = get_space("hybrid", **HYBRID_ARGS)
    search = get_search("oneshot", space, **{**RUN, "epochs": 1}, supernets=2,
                        sampler="elasticvit", sandwich=1)
    outcome = search.run(tmp_path)
    assert outcome.finished and all(space.validate(a) == a for a in outcome.archs)
    counts = np.bincount(search.supernet.assignment(), minlength=2)
    assert counts.min() >= len(pooling_configs(space)) // 2
