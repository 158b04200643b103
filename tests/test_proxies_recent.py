"""MeCo, ZiCo, SWAP, AZ-NAS and TE-NAS's NTK: each proxy's definition on a small model, the
model left as found, and (integration) its ranking of NAS-Bench-201 cells on real images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from predictors import combine
from predictors.proxies import compute_proxies, run_proxy
from predictors.proxies.az_nas import IDENTITY_BLOCK, az_components, covariance_entropy
from predictors.proxies.meco import min_correlation_eigenvalue
from predictors.proxies.swap import SWAP_MU, SWAP_SIGMA
from predictors.proxies.zico import zico_of_gradients
from search_spaces import get_space
from tests.conftest import SHARED_DATA, skip_or_fail

NEW = ["meco", "zico", "swap", "swap_reg", "az_expressivity", "az_progressivity",
       "az_trainability", "az_nas", "te_ntk"]
CONVS = {"ops": ["nor_conv_3x3", "nor_conv_3x3", "nor_conv_1x1", "nor_conv_3x3",
                 "skip_connect", "nor_conv_3x3"]}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(n: int = 8, side: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, side, side, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_meco_sums_the_smallest_channel_correlation_eigenvalue_of_every_module_output():
    x, y = _batch()
    model = nn.Sequential(nn.Identity())  # two modules (the Sequential, the Identity)
    rows = x[0].reshape(3, -1).double().numpy()
    expected = np.linalg.eigvalsh(np.corrcoef(rows))[0]
    assert min_correlation_eigenvalue(x[0]) == pytest.approx(expected)
    assert run_proxy("meco", model, x, y) == pytest.approx(2 * expected)
    # a constant channel has no correlation: its row and column are zero, eigenvalue 0
    flat = x[0].clone()
    flat[1] = 1.0
    assert min_correlation_eigenvalue(flat) == pytest.approx(0.0, abs=1e-12)


def test_zico_is_the_log_of_the_summed_inverse_coefficient_of_variation():
    g1 = [torch.tensor([1.0, 2.0, 5.0]), torch.tensor([0.0])]
    g2 = [torch.tensor([3.0, 2.0, -1.0]), torch.tensor([0.0])]  # layer 2 never varies: left out
    # weight 1: mean|g| 2, std 1; weight 2: std 0 (left out); weight 3: mean|g| 3, std 3
    assert zico_of_gradients([g1, g2]) == pytest.approx(math.log(2.0 + 1.0))
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    halves = []
    for part in (slice(0, 3), slice(3, 6)):
        w = model.weight.detach().clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(x[part] @ w.t() + model.bias.detach(), y[part])
        halves.append([torch.autograd.grad(loss, [w])[0]])
    assert run_proxy("zico", model, x, y) == pytest.approx(zico_of_gradients(halves))


def test_swap_counts_the_distinct_activation_patterns_of_the_examples():
    x, y = _batch(n=5)
    model = nn.Sequential(nn.ReLU())  # no weights: every draw gives the same patterns
    codes = (x.reshape(5, -1) > 0).t().numpy()
    expected = len({tuple(row) for row in codes})
    assert 1 < expected <= 2 ** 5
    assert run_proxy("swap", model, x, y) == expected
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    kparams = sum(p.numel() for p in conv.parameters()) / 1e3
    factor = math.exp(-((kparams - SWAP_MU) ** 2) / SWAP_SIGMA)
    assert run_proxy("swap_reg", conv, x, y) == pytest.approx(run_proxy("swap", conv, x, y)
                                                              * factor)


def test_te_ntk_is_minus_the_condition_number_of_the_tangent_kernel():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)  # d(sum of logits)/dW = 1 x^T per example: NTK = 3 X X^T
    x = torch.randn(4, 6)
    eig = np.linalg.eigvalsh((x @ x.t()).double().numpy())
    value = run_proxy("te_ntk", model, x, torch.zeros(4, dtype=torch.long))
    assert value == pytest.approx(-eig[-1] / eig[0], rel=1e-6)
    with pytest.raises(ValueError, match="needs a model with weights"):
        run_proxy("te_ntk", nn.Flatten(), x, None)


def test_az_nas_components_on_known_blocks():
    feat = torch.randn(2, 4, 3, 3)
    rows = feat.permute(0, 2, 3, 1).reshape(-1, 4).double().numpy()
    eig = np.clip(np.linalg.eigvalsh(np.cov(rows.T, bias=True)), 0, None)
    p = eig / eig.sum()
    assert covariance_entropy(feat) == pytest.approx(-(p * np.log(p + 1e-8)).sum())
    # a chain of identity blocks passes every gradient unchanged: the reference's -inf
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Identity(), nn.Identity())
    x, y = _batch()
    values = az_components(chain, x, y, nn.functional.cross_entropy)
    assert values["az_trainability"] == pytest.approx(IDENTITY_BLOCK)
    assert values["az_progressivity"] <= 0.0  # identical features: no progress
    assert values["az_expressivity"] > 0


def test_log_rank_sum_is_azs_aggregation_and_az_nas_score_places_one_arch():
    scores = {"a": [1.0, 2.0, 3.0], "b": [3.0, 2.0, 1.0]}
    expected = [math.log(1 / 3) + math.log(1.0), math.log(2 / 3) * 2,
                math.log(1.0) + math.log(1 / 3)]
    assert combine.log_rank_sum(scores).tolist() == pytest.approx(expected)
    quantiles = {name: [0.0, 1.0] for name in combine.AZ_NAS_COMPONENTS}
    top = dict.fromkeys(combine.AZ_NAS_COMPONENTS, 1.0)
    assert combine.az_nas_score({**top, "flops": math.e}, quantiles) == pytest.approx(0.0)
    low = combine.az_nas_score({**top, "az_trainability": 0.0, "flops": math.e}, quantiles)
    assert low == pytest.approx(math.log(1 / 1000))
    with pytest.raises(ValueError, match="az_nas needs 'az_progressivity'"):
        combine.az_nas_score({"az_expressivity": 1.0}, quantiles)


@pytest.mark.parametrize("name", NEW)
def test_the_model_is_left_as_found(name):
    space = get_space("nb201", channels=4, cells_per_stage=1, input_size=8)
    torch.manual_seed(0)
    model = space.build(CONVS).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch()
    first = run_proxy(name, model, x, y, seed=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert run_proxy(name, model, x, y, seed=1) == first  # the same model again: same score


# ---- ranking NAS-Bench-201 cells (integration) -------------------------------------------
#: Floors that a wrong sign, a constant or a random score fails: on these 14 cells (an
#: 8-channel, 1-cell-per-stage network, seed 0) the proxies rank at Spearman meco 0.94,
#: zico 0.90, swap 0.85, swap_reg 0.86, az_expressivity 0.82, az_progressivity 0.53,
#: az_trainability 0.30, te_ntk 0.85 (the components are weaker alone, as in the AZ-NAS paper).
FLOORS = {"meco": 0.6, "zico": 0.6, "swap": 0.5, "swap_reg": 0.5, "az_expressivity": 0.5,
          "az_progressivity": 0.2, "az_trainability": 0.0, "az_nas": 0.5, "te_ntk": 0.5}


@pytest.fixture(scope="module")
def spread_cells():
    """14 cells spread over NB201's CIFAR-10 accuracy range and the 20 real test images, as
    the `proxy` evaluator (and bench/proxies.py) reads them."""
    from workers.evaluators.proxy import ProxyEvaluator
    from workers.tables import load_table

    images = SHARED_DATA / "cifar10-test-first20.npz"
    if not images.is_file():
        skip_or_fail(f"{images} not found (see shared/data/README.md)")
    table = load_table("nb201-cifar10")
    keys = sorted(table.rows, key=lambda k: table.rows[k]["test_acc"])
    picks = [keys[int(q)] for q in np.linspace(len(keys) * 0.02, len(keys) - 1, 14)]
    space = get_space("nb201", channels=8, cells_per_stage=1)
    batch = ProxyEvaluator(space, proxies=["synflow"], dataset=f"npz:{images}").batch()
    return space, picks, [table.rows[k]["test_acc"] for k in picks], batch


@pytest.mark.integration
def test_each_new_proxy_ranks_nb201_cells_by_accuracy(spread_cells):
    from scipy.stats import spearmanr

    space, keys, accuracy, batch = spread_cells
    scores = [compute_proxies(lambda k=k: space.build(space.from_key(k)), batch, list(FLOORS))
              for k in keys]
    for name, floor in FLOORS.items():
        rho = spearmanr([s[name] for s in scores], accuracy)[0]
        assert rho > floor, f"{name}: Spearman {rho:.2f} <= {floor}"


def test_a_group_computed_together_gives_each_proxy_its_value_alone():
    """AZ-NAS and SWAP draw random weights and inputs: `compute_proxies` seeds torch before a
    shared pass as before a proxy alone, so the shared pass gives the same values."""
    space = get_space("nb201", channels=4, cells_per_stage=1, input_size=8)
    x, y = _batch()
    names = ["az_expressivity", "az_progressivity", "az_trainability", "swap", "swap_reg"]
    together = compute_proxies(lambda: space.build(CONVS), (x, y), names, seed=2)
    for name in names:
        assert compute_proxies(lambda: space.build(CONVS), (x, y), [name], seed=2) == \
            {name: together[name]}
