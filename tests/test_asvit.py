"""As-ViT (issue 18): the `linear_regions` proxy's definition, and the `asvit` strategy
(topology search by NTK condition number and linear regions, then scaling to a budget)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.spec import SpecError, parse_spec
from nas.strategies import check_strategy, get_strategy, list_strategies
from predictors.proxies.linear_regions import count_linear_regions, segments
from search_spaces import get_space
from search_spaces.validation import ArgumentError
from tests.conftest import nb201_spec

ANALYTIC = {"evaluator": "analytic", "evaluator_args": {},
            "objectives": [{"metric": "params", "mode": "min"}]}
DIGITS_VIT = {"input_channels": 1, "input_size": 8, "patch_stride": 1, "stages": 3,
              "widths": [8, 16, 24], "heads": [4, 8], "depths": [1, 2], "ratios": [2, 4]}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one thread is fastest and immune to a busy machine's contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _space():
    return get_space("vit", **DIGITS_VIT)


def test_linear_regions_of_one_relu_unit_on_a_segment_is_exact():
    """f(x) = relu(w.x): a segment from -v to v with w.v > 0 crosses the one boundary once
    (2 regions); a segment that stays on one side crosses none (1 region)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False), nn.ReLU())
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    crossing = segments(torch.stack([-v, v, -v]), points=9, count=2)
    assert count_linear_regions(model, crossing, points=9) == 2.0
    one_side = segments(torch.stack([v, 2 * v, 3 * v]), points=9, count=2)
    assert count_linear_regions(model, one_side, points=9) == 1.0


def test_asvit_is_listed_and_passes_check_strategy():
    assert "asvit" in list_strategies()
    space = _space()
    check_strategy(lambda seed: get_strategy("asvit", space, seed=seed, steps=4, batch=2,
                                             max_flops=2e6), trials=12, window=2)


def test_asvit_scales_the_seed_to_the_budget():
    space = _space()
    strategy = get_strategy("asvit", space, seed=0, steps=6, batch=4, max_flops=1.5e6)
    first = strategy.ask()
    report = strategy.report
    seed = space.from_key(report["seed"])
    assert seed["depths"] == [1, 1, 1] and seed["width"] == 8
    path = [space.from_key(k) for k in report["path"]]
    assert path and space.key(first) == report["path"][-1]
    flops = [space.flops(a) for a in [seed, *path]]
    assert flops == sorted(flops) and flops[-1] <= 1.5e6
    for a, b in zip([seed, *path], path, strict=False):  # one growth step each time
        assert {k: a[k] for k in ("kernels", "splits", "ratios", "heads")} == \
            {k: b[k] for k in ("kernels", "splits", "ratios", "heads")}
        assert a != b and all(x <= y for x, y in zip(a["depths"], b["depths"], strict=True))
    # nothing that grows the last design fits the budget any more
    assert strategy.grow_candidates(path[-1]) == []


@pytest.mark.parametrize("args, field", [
    ({"steps": 0}, "steps"), ({"seed_width": 12}, "seed_width"), ({"max_flops": -1}, "max_flops"),
    ({"lr": "x"}, "lr")])
def test_bad_asvit_arguments_name_the_field(args, field):
    spec = nb201_spec(space="vit", space_args=DIGITS_VIT, strategy="asvit", strategy_args=args,
                      **ANALYTIC)
    with pytest.raises(SpecError, match=rf"strategy_args\.{field}"):
        parse_spec(spec)


def test_asvit_refuses_another_space():
    with pytest.raises(SpecError, match="space"):
        parse_spec(nb201_spec(strategy="asvit", strategy_args={}, **ANALYTIC))


# ---- the vit space ---------------------------------------------------------------------------
def test_vit_keys_are_asvit_genotypes_and_heads_double_per_stage():
    """(check_space runs on the registered `vit` in tests/test_spaces.py.)"""
    space = _space()
    arch = {"kernels": [2, 3, 4], "splits": [2, 1, 1], "ratios": [4, 2, 4], "depths": [1, 2, 1],
            "heads": 8, "width": 16}
    assert space.key(arch) == "2,2,4,1|3,1,2,2|4,1,4,1|8,16"
    assert space.from_key(space.key(arch)) == arch
    model = space.build(arch)
    assert [b.attn.heads for b in model.stages if hasattr(b, "attn")] == [2, 4, 4, 8]
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("args, field", [
    ({"splits": [[3], [1], [1]]}, "splits[0]"), ({"heads": [6]}, "heads"),
    ({"widths": [6], "heads": [16]}, "widths"), ({"stages": 5}, "stages"),
    ({"patch_kernels": [0]}, "patch_kernels")])
def test_bad_vit_space_arguments_name_the_field(args, field):
    with pytest.raises(ArgumentError) as info:
        get_space("vit", **{**DIGITS_VIT, **args})
    assert info.value.field == field
