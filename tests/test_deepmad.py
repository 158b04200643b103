"""The `deepmad` strategy (DeepMAD with MAE-NAS's entropy) and the `deepmad_entropy` proxy:
the entropy and effectiveness of a hand-computed network, the program's constraints held,
the conformance suite on `mbconv`, a job end to end, and bad arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nas import api
from nas.storage import Storage
from nas.strategies import (
    Constraint,
    SearchContext,
    check_strategy,
    get_strategy,
)
from nas.strategies.deepmad import effectiveness, entropy, structure_of
from predictors.proxies import run_proxy
from search_spaces import get_space
from search_spaces.validation import ArgumentError, UnsupportedSpaceError
from tests.conftest import nb201_spec

#: A digits-sized mbconv space (1 x 8 x 8 inputs).
DIGITS = {"input_size": 8, "input_channels": 1, "num_classes": 10}


def tiny_space():
    """One stage of one MBConv block: stem 1->8 (3x3), separable 8 (dw 3x3, pw 8->8), block
    8 -> mid 16 (k3, stride 2) -> 8, head 1x1 8 -> 16; input 4 x 4."""
    return get_space("mbconv", input_size=4, input_channels=1, stage_channels=[8],
                     stage_strides=[2], stem_channels=8, head_channels=16, depths=[1],
                     kernel_sizes=[3], expand_ratios=[2], width_mults=[1.0])


def test_entropy_and_effectiveness_of_a_hand_computed_network():
    space = tiny_space()
    arch = space.sample(np.random.default_rng(0))
    structure = structure_of(space, arch)
    # stage 0 (before the stride-2 block): stem 0.5 ln(1*9), dw 0.5 ln(9), pw 0.5 ln(8);
    # it ends with 8 channels at side 4
    first = 0.5 * math.log(9) + 0.5 * math.log(9) + 0.5 * math.log(8)
    # stage 1: the block 0.5 ln(8 * 3^2 * 16), the head 0.5 ln(8); 16 channels at side 2
    second = first + 0.5 * math.log(8 * 9 * 16) + 0.5 * math.log(8)
    expected = math.log(8 * 4 ** 2) * first + 8 * math.log(16 * 2 ** 2) * second
    assert entropy(structure) == pytest.approx(expected, rel=1e-12)
    assert entropy(structure, last_stage_weight=1.0) == pytest.approx(
        math.log(128) * first + math.log(64) * second, rel=1e-12)
    # widths c k^2 / g: stem 9, dw 9, pw 8 | block 8, 9, 16, head 8
    rho_first = 3 / (9 * 9 * 8) ** (1 / 3)
    rho_all = 7 / (9 * 9 * 8 * 8 * 9 * 16 * 8) ** (1 / 7)
    assert effectiveness(structure) == pytest.approx(max(rho_first, rho_all), rel=1e-12)


def test_the_proxy_agrees_with_the_analytic_entropy_on_nb201_cells():
    space = get_space("nb201", channels=4, cells_per_stage=1, input_size=8)
    cells = [["none"] * 6, ["skip_connect"] * 6, ["avg_pool_3x3"] * 3 + ["skip_connect"] * 3,
             ["nor_conv_1x1"] * 6, ["nor_conv_3x3"] * 6]
    batch = torch.zeros(2, 3, 8, 8)
    measured = [run_proxy("deepmad_entropy", space.build({"ops": ops}), batch, None)
                for ops in cells]
    analytic = [entropy(structure_of(space, {"ops": ops})) for ops in cells]
    assert np.argsort(measured).tolist() == np.argsort(analytic).tolist() == [0, 2, 1, 3, 4]


def _digits_budget() -> tuple[object, float]:
    space = get_space("mbconv", **DIGITS)
    rng = np.random.default_rng(1)
    return space, float(np.median([space.flops(space.sample(rng)) for _ in range(50)]))


def test_designs_meet_the_budgets_and_beat_random_feasible_ones():
    space, budget = _digits_budget()
    strategy = get_strategy("deepmad", space, seed=0, max_flops=budget, rho=1.0,
                            iterations=400)
    first = strategy.ask()
    report = strategy.design_report(first)
    assert report["flops"] <= budget and report["effectiveness"] <= 1.0
    for key, _ in strategy.designs:  # every design of the solver is feasible
        arch = space.from_key(key)
        assert space.flops(arch) <= budget
        assert effectiveness(structure_of(space, arch)) <= 1.0
    objectives = [v for _, v in strategy.designs]
    assert objectives == sorted(objectives, reverse=True)
    assert report["objective"] == objectives[0]
    rng = np.random.default_rng(5)
    feasible = [a for a in (space.sample(rng) for _ in range(300)) if strategy.feasible(a)]
    assert len(feasible) > 20
    assert report["objective"] > max(strategy.objective(a) for a in feasible)


def test_the_jobs_known_constraints_bind_the_program():
    space, _ = _digits_budget()
    limit = 150_000.0
    strategy = get_strategy("deepmad", space, seed=0, iterations=200)
    strategy.bind(SearchContext(
        constraints=(Constraint("params", max=limit),),
        value_of=lambda key, metric, device: float(space.params(space.from_key(key)))
        if metric == "params" else None))
    for _ in range(10):
        assert space.params(strategy.ask()) <= limit


@pytest.mark.integration
def test_check_strategy_on_mbconv():
    space, budget = _digits_budget()
    check_strategy(lambda seed: get_strategy("deepmad", space, seed=seed, max_flops=budget,
                                             iterations=150), trials=30)


@pytest.mark.integration
def test_a_job_proposes_the_design_first(sqlite_url):
    space, budget = _digits_budget()
    storage = Storage(sqlite_url)
    spec = nb201_spec(space="mbconv", space_args=DIGITS, strategy="deepmad",
                      strategy_args={"iterations": 200}, evaluator="analytic",
                      evaluator_args={}, objectives=[{"metric": "params", "mode": "min"}],
                      constraints=[{"metric": "flops", "max": budget}],
                      budget={"trials": 4}, parallelism=1)
    job = api.submit(storage, spec)
    assert api.run(storage, job) == "completed"
    rows = sorted(storage.trials.load(job), key=lambda r: r.number)
    design = get_strategy("deepmad", space, seed=0, iterations=200)
    design.bind(SearchContext(constraints=(Constraint("flops", max=budget),),
                              value_of=lambda k, m, d: float(space.flops(space.from_key(k)))
                              if m == "flops" else None))
    assert rows[0].key == space.key(design.ask())
    assert all(r.status == "completed" and r.metrics["flops"] <= budget for r in rows)


@pytest.mark.parametrize("args, field", [
    ({"rho": 0}, "rho"), ({"rho": "high"}, "rho"), ({"max_flops": -1}, "max_flops"),
    ({"max_params": "x"}, "max_params"), ({"iterations": -1}, "iterations"),
    ({"population": 1}, "population"), ({"last_stage_weight": -2}, "last_stage_weight"),
    ({"depth_penalty": float("nan")}, "depth_penalty")])
def test_bad_arguments_name_the_field(args, field):
    with pytest.raises(ArgumentError) as info:
        get_strategy("deepmad", get_space("mbconv", **DIGITS), **args)
    assert info.value.field == field


def test_an_unsupported_space_is_refused():
    with pytest.raises(UnsupportedSpaceError, match="mbconv, nb201"):
        get_strategy("deepmad", get_space("hybrid"))


def test_with_no_feasible_design_the_smallest_network_comes_first():
    space = get_space("mbconv", **DIGITS)
    strategy = get_strategy("deepmad", space, max_flops=1000.0, iterations=50)
    assert strategy.ask() == space.min_arch() and strategy.designs == []
    assert strategy.ask() != space.min_arch()
