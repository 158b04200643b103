"""The training-free scoring engine's speed-ups keep the scores: NB201's isomorphism classes
(`function_key`), the shared network of `SharedModel`, MeCo's shared terms, determinism, the
`device` argument, and the `proxy` strategy's `dedup`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.strategies import ProxySearch
from predictors.proxies import compute_proxies, list_proxies
from search_spaces import NB201Space
from search_spaces.nb201 import OPS, effective_ops, function_key
from search_spaces.validation import ArgumentError
from workers.evaluators._base import EvaluationError
from workers.evaluators.proxy import ProxyEvaluator, SharedModel

C1, C3, AP, SK, NO = "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "none"
#: edges: 0->1, 0->2, 1->2, 0->3, 1->3, 2->3
TWO_PATHS = [C3, C1, NO, NO, SK, SK]  # conv3(x) + conv1(x), through nodes 1 and 2
TINY = NB201Space(channels=4, cells_per_stage=1, input_size=8)


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("a, b", [
    (TWO_PATHS, [C1, C3, NO, NO, SK, SK]),  # the two intermediate nodes swapped
    ([C3, NO, NO, NO, SK, C1], [C3, NO, NO, NO, SK, NO]),  # 2->3 reads a node never reached
    ([C3, C1, NO, NO, NO, SK], [NO, C1, NO, NO, NO, SK]),  # node 1 reaches no output: dead
    ([SK, NO, C3, NO, NO, SK], [NO, NO, NO, C3, NO, NO]),  # skips are the identity
    ([AP, AP, NO, NO, SK, SK], [AP, NO, SK, NO, SK, SK]),  # one pooling of x, reached twice
])
def test_isomorphic_cells_have_one_function_key(a, b):
    assert function_key(a) == function_key(b)
    assert NB201Space().function_key({"ops": a}) == NB201Space().function_key({"ops": b})


@pytest.mark.parametrize("a, b", [
    ([C3, NO, SK, NO, SK, SK], [C3, NO, NO, C3, SK, NO]),  # 2 * conv(x) vs conv(x) + conv'(x)
    (TWO_PATHS, [C3, C3, NO, NO, SK, SK]),  # another operation
    ([AP, AP, NO, NO, SK, SK], [AP, NO, NO, NO, SK, NO]),  # 2 * pool(x) vs pool(x)
    ([C3, NO, C1, NO, NO, SK], [C1, NO, C3, NO, NO, SK]),  # conv1(conv3(x)): order matters
])
def test_cells_computing_other_functions_have_other_keys(a, b):
    assert function_key(a) != function_key(b)


def test_isomorphic_cells_compute_the_same_function_with_their_weights_swapped():
    """The exact sense of the key: the node-swapped cell, given the first one's weights on
    the swapped edges, computes the same outputs."""
    swapped = [C1, C3, NO, NO, SK, SK]
    torch.manual_seed(0)
    first, second = TINY.build({"ops": TWO_PATHS}), TINY.build({"ops": swapped})
    state = first.state_dict()
    for name in list(state):  # edge 0 <-> edge 1 (0->1 and 0->2), 4 <-> 5 (1->3, 2->3)
        for x, y in (("edges.0.", "edges.1."), ("edges.1.", "edges.0.")):
            if x in name:
                state[name.replace(x, y)] = first.state_dict()[name]
    second.load_state_dict(state)
    x = _batch()[0]
    assert torch.allclose(first(x), second(x), atol=1e-6)
    assert not torch.allclose(first(x), TINY.build({"ops": swapped})(x), atol=1e-3)


def test_the_classes_of_the_whole_space():
    """Every cell is in the class of its effective cell; 5,260 classes among 15,625."""
    space = NB201Space()
    keys = {function_key(a["ops"]) for a in space.enumerate()}
    assert len(keys) == 5260
    rng = np.random.default_rng(0)
    for _ in range(200):
        ops = [OPS[i] for i in rng.integers(0, len(OPS), 6)]
        assert function_key(ops) == function_key(effective_ops(ops))


#: One proxy of each way of changing the network it is given: dtype and signs (synflow),
#: gradient flags (jacov), hooks and kept_state (meco), a gradient group (snip, grad_norm,
#: fisher), modes (nwot), Gaussian re-initialisation (zen, az_trainability), per-layer
#: statistics (evolved), float64 passes (deepmad_entropy), sign flips (linear_regions).
CHANGING = ["synflow", "jacov", "meco", "snip", "grad_norm", "fisher", "nwot", "zen",
            "az_trainability", "evolved.nb201", "deepmad_entropy", "linear_regions", "params"]


def test_a_shared_network_gives_the_proxies_the_scores_of_fresh_builds():
    """`SharedModel` (one build per cell) against one fresh build per proxy: equal scores
    (bench/proxy_throughput.py checks the default battery on 100s of cells)."""
    assert set(CHANGING) <= set(list_proxies())
    arch = {"ops": [C3, SK, C1, AP, NO, C3]}
    fresh = compute_proxies(lambda: TINY.build(arch), _batch(), CHANGING, seed=3)
    shared = SharedModel(lambda: TINY.build(arch))
    assert compute_proxies(shared, _batch(), CHANGING, seed=3) == fresh
    assert shared.builds <= 3


def test_the_evaluator_is_deterministic_and_equals_fresh_builds():
    space = NB201Space(channels=8, cells_per_stage=1, input_channels=1, input_size=8)
    names = ["meco", "synflow", "jacov", "params"]
    arch = {"ops": [C3, AP, C1, SK, C3, SK]}
    first = ProxyEvaluator(space, proxies=names, dataset="digits", seed=2).compute(arch, names)
    evaluator = ProxyEvaluator(space, proxies=names, dataset="digits", seed=2)
    assert evaluator.compute(arch, names) == first
    fresh = compute_proxies(lambda: space.build(arch), evaluator.batch(arch), names[:3],
                            seed=2)
    assert {n: first[n] for n in names[:3]} == fresh
    other = ProxyEvaluator(space, proxies=names, dataset="digits", seed=3).compute(arch, names)
    assert other["meco"] != first["meco"]


def test_the_device_argument():
    with pytest.raises(ArgumentError) as exc:
        ProxyEvaluator(TINY, device="gpu")
    assert exc.value.field == "device"
    with pytest.raises(ArgumentError) as exc:
        ProxySearch(TINY, proxies=["synflow"], proxy_device="tpu:0")
    assert exc.value.field == "proxy_device"
    with pytest.raises(ArgumentError) as exc:
        ProxySearch(TINY, proxies=["synflow"], dedup="yes")
    assert exc.value.field == "dedup"
    assert ProxyEvaluator.uses_gpu({}) and ProxyEvaluator.uses_gpu({"device": "cuda"})
    assert not ProxyEvaluator.uses_gpu({"device": "cpu"})
    has_gpu = torch.cuda.is_available()
    auto = ProxyEvaluator(TINY, proxies=["synflow"])
    assert auto.torch_device().type == ("cuda" if has_gpu else "cpu")
    arch = {"ops": TWO_PATHS}
    on_cpu = ProxyEvaluator(TINY, proxies=["synflow"], device="cpu").compute(arch, ["synflow"])
    cuda = ProxyEvaluator(TINY, proxies=["synflow"], device="cuda")
    if has_gpu:  # scored on the GPU: the CPU's score up to float rounding
        assert cuda.compute(arch, ["synflow"])["synflow"] == pytest.approx(
            on_cpu["synflow"], rel=1e-6)
    else:  # a worker without a GPU fails the evaluation with one line
        with pytest.raises(EvaluationError) as failed:
            cuda.evaluate(arch, "k")
        assert str(failed.value) == ("evaluator_args.device is 'cuda' but this worker has no "
                                     "CUDA device")


def test_dedup_scores_one_cell_per_class_and_shares_its_scores():
    space = NB201Space(channels=4, cells_per_stage=1, input_channels=1, input_size=8)
    names = ["synflow", "params"]
    plain = ProxySearch(space, seed=0, pool=300, proxies=names, dataset="digits")
    dedup = ProxySearch(space, seed=0, pool=300, proxies=names, dataset="digits", dedup=True)
    pool = dedup.pool_candidates()
    assert pool == plain.pool_candidates()
    scored = dedup.preparation().candidates
    classes = {space.function_key(a) for _, a in pool}
    assert len(plain.preparation().candidates) == 300 > len(scored) == len(classes)
    result = {k: {"synflow": float(i + 1)} for i, (k, _) in enumerate(scored)}  # as measured
    seen: dict[str, dict[str, float]] = {}
    dedup.set_scores = lambda scores: (seen.update(scores), ProxySearch.set_scores(dedup, scores))
    dedup.prepared(result)
    chosen = dedup.scored_for(pool)
    archs = dict(pool)
    shared = [k for k in chosen if chosen[k] != k]
    assert shared and set(dedup.pool_scores) == set(seen) == set(archs)
    job_space = NB201Space()  # (no driver: the job's space_args are the defaults)
    for key in shared:  # the class's synflow, each cell's own params
        assert space.function_key(archs[key]) == space.function_key(archs[chosen[key]])
        live = [k for k in chosen if chosen[k] == chosen[key]
                and effective_ops(archs[k]["ops"]) == archs[k]["ops"]]
        assert chosen[key] == (min(live) if live else min(
            k for k in chosen if chosen[k] == chosen[key]))  # a live member if it has one
        assert seen[key]["synflow"] == result[chosen[key]]["synflow"]
        assert seen[key]["params"] == job_space.params(archs[key])
    assert any(seen[k]["params"] != seen[chosen[k]]["params"] for k in shared)
    again = ProxySearch(space, seed=0, pool=300, proxies=names, dataset="digits", dedup=True)
    again.prepared(result)
    assert again.ranking == dedup.ranking


@pytest.mark.integration
def test_a_dedup_job_scores_one_cell_per_class_through_the_driver():
    """Seed 3's 10-cell pool holds two pairs of isomorphic cells: 8 cells scored and
    stored, the job completes with 3 trials, a second job reuses every stored score."""
    from sqlalchemy import func, select

    from nas import api
    from nas.driver import Driver
    from nas.storage import Storage
    from nas.storage.schema import measurements
    from workers.executors import LocalExecutor

    args = {"channels": 8, "cells_per_stage": 1, "input_channels": 1, "input_size": 8}
    strategy = {"pool": 10, "proxies": ["meco", "params"], "dataset": "digits",
                "dedup": True, "proxy_device": "cpu"}
    spec = {"name": "dedup", "space": "nb201", "space_args": args, "strategy": "proxy",
            "strategy_args": strategy, "evaluator": "benchmark",
            "evaluator_args": {"table": "nb201-cifar10"},
            "objectives": [{"metric": "valid_acc", "mode": "max"}],
            "budget": {"trials": 3}, "executor": "local", "seed": 3}
    submitted: list[str] = []

    class Counting(LocalExecutor):
        def submit(self, batch):
            submitted.extend(t.key for t in batch)
            super().submit(batch)

    storage = Storage("sqlite://")
    for name in ("first", "second"):
        job = api.submit(storage, {**spec, "name": name})
        driver = Driver(storage, job, executor_factory=lambda s, e: Counting(e, slots=1))
        assert driver.run() == "completed"
        assert len(storage.trials.load(job)) == 3
        with storage.read() as conn:
            rows = conn.execute(select(func.count()).select_from(measurements).where(
                measurements.c.device.like("proxy:%"))).scalar_one()
        assert rows == 8
    assert len(submitted) == 8 + 3 + 3  # the 8 scored once, then each job's trials
