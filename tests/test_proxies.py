"""Training-free proxies, their combination and the `proxy` evaluator."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import workers.evaluators.proxy  # noqa: F401  (registers the evaluator)
from predictors import combine
from predictors.proxies import compute_proxies, get_proxy, list_proxies, run_proxy
from search_spaces import get_space
from tests.conftest import ROOT, SHARED_DATA, skip_or_fail
from workers.evaluators import get_evaluator
from workers.evaluators.proxy import DEFAULT_PROXIES, ProxyEvaluator

ALL = ["az_expressivity", "az_nas", "az_progressivity", "az_trainability", "deepmad_entropy",
       "emq", "evolved.nb201",
       "fisher", "flops", "grad_norm", "grasp", "jacov", "linear_regions", "meco", "nwot",
       "params", "snip",
       "swap", "swap_reg", "synflow", "te_ntk", "zen", "zico"]
CONVS = {"ops": ["nor_conv_3x3", "nor_conv_3x3", "nor_conv_1x1", "nor_conv_3x3",
                 "skip_connect", "nor_conv_3x3"]}
ALL_NONE = {"ops": ["none"] * 6}
SKIPS = {"ops": ["skip_connect"] * 6}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """A small CIFAR-shaped NB201 network (4 channels, 1 cell per stage) and a batch."""
    space = get_space("nb201", channels=4, cells_per_stage=1, input_size=16)
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))
    return space, batch


@pytest.fixture(scope="module")
def cifar20():
    path = SHARED_DATA / "cifar10-test-first20.npz"
    if not path.is_file():
        skip_or_fail(f"{path} not found (see shared/data/README.md)")
    return path


def test_registry_lists_the_battery_and_rejects_unknown_names():
    assert list_proxies() == ALL
    assert not get_proxy("synflow").data and not get_proxy("zen").data
    assert get_proxy("snip").data and get_proxy("snip").description.startswith("SNIP")
    with pytest.raises(KeyError, match="unknown proxy 'nope'"):
        get_proxy("nope")
    with pytest.raises(KeyError, match="unknown proxy"):
        compute_proxies(lambda: nn.Linear(2, 2), (torch.zeros(2, 2), torch.zeros(2)), ["x"])


@pytest.mark.integration
def test_importing_the_proxies_does_not_import_torch():
    code = ("import sys, predictors.proxies, predictors.combine; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.integration
def test_every_proxy_is_finite_and_deterministic_for_a_seed(tiny):
    space, batch = tiny
    first = compute_proxies(lambda: space.build(CONVS), batch, ALL, seed=3)
    again = compute_proxies(lambda: space.build(CONVS), batch, ALL, seed=3)
    assert first == again
    assert all(math.isfinite(v) for v in first.values()), first
    other = compute_proxies(lambda: space.build(CONVS), batch, ["snip", "zen"], seed=4)
    assert other["snip"] != first["snip"] and other["zen"] != first["zen"]


@pytest.mark.integration
def test_shared_pass_gives_the_values_of_each_proxy_alone(tiny):
    space, batch = tiny
    timings: dict[str, float] = {}
    grouped = compute_proxies(lambda: space.build(CONVS), batch, ["snip", "fisher", "grad_norm"],
                              timings=timings)
    assert set(timings) == {"snip", "fisher", "grad_norm"}
    for name in grouped:
        alone = compute_proxies(lambda: space.build(CONVS), batch, [name])[name]
        assert alone == pytest.approx(grouped[name], rel=1e-9)


def test_snip_and_grad_norm_match_their_definitions_on_a_linear_model():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    weight = model.weight.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(x @ weight.t() + model.bias.detach(), y)
    (grad,) = torch.autograd.grad(loss, [weight])
    assert run_proxy("snip", model, x, y) == pytest.approx((weight * grad).abs().sum().item())
    assert run_proxy("grad_norm", model, x, y) == pytest.approx(grad.norm().item())


def test_nwot_is_the_log_determinant_of_the_hamming_kernel():
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    x = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
    codes = (x > 0).double()
    kernel = codes @ codes.t() + (1 - codes) @ (1 - codes).t()
    expected = torch.linalg.slogdet(kernel)[1].item()
    assert run_proxy("nwot", model, x, torch.zeros(3, dtype=torch.long)) == pytest.approx(expected)


@pytest.mark.integration
def test_synflow_is_data_free_in_double_precision_and_restores_the_model(tiny):
    space, batch = tiny
    torch.manual_seed(0)
    model = space.build(CONVS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score = run_proxy("synflow", model, *batch)
    noise = (torch.randn_like(batch[0]) * 5, batch[1])
    torch.manual_seed(0)
    assert run_proxy("synflow", space.build(CONVS), *noise) == score
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32 and model.training
    # the default 17-layer network overflows float32 for the all-conv cell; double does not
    big = get_space("nb201")
    torch.manual_seed(0)
    value = run_proxy("synflow", big.build(CONVS), torch.zeros(1, 3, 32, 32), None)
    assert math.isfinite(value) and value > 3.4e38


def test_a_network_whose_output_ignores_its_input_scores_worst_and_finite(tiny):
    space, batch = tiny
    dead = compute_proxies(lambda: space.build(ALL_NONE), batch, ["synflow", "jacov", "zen"])
    live = compute_proxies(lambda: space.build(SKIPS), batch, ["synflow", "jacov", "zen"])
    assert dead["synflow"] == 0.0 and live["synflow"] > 0
    assert dead["jacov"] == pytest.approx(-8 * (math.log(1e-5) + 1e5))
    assert live["jacov"] > dead["jacov"] and live["zen"] > dead["zen"]
    assert all(math.isfinite(v) for v in dead.values())


def test_cost_proxies_equal_the_space_cost_model(tiny):
    space, batch = tiny
    scores = compute_proxies(lambda: space.build(CONVS), batch, ["params", "flops"])
    assert scores == {"params": space.params(CONVS), "flops": space.flops(CONVS)}


@pytest.mark.integration
def test_parametrized_weights_are_scored_through_their_original(tiny):
    """The quant space fake-quantizes weights with a parametrization (`weight` is computed):
    the gradient proxies read the trainable original, Zen re-draws it, synflow restores it."""
    space = get_space("quant", input_channels=1, input_size=8)
    arch = space.sample(np.random.default_rng(0))
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6)
    torch.manual_seed(0)
    model = space.build(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert run_proxy("synflow", model, x, y) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    scores = compute_proxies(lambda: space.build(arch), (x, y), ["snip", "grad_norm", "grasp"])
    assert scores["snip"] > 0 and scores["grad_norm"] > 0 and scores["grasp"] != 0


@pytest.mark.integration
def test_proxies_rank_nb201_cells_on_real_images(cifar20):
    """On the default network and the 20 real images: a strong cell beats the all-skip cell,
    which beats the all-none cell (10% accuracy), on the default battery's proxies."""
    space = get_space("nb201")
    evaluator = ProxyEvaluator(space, proxies=["synflow", "nwot", "jacov"],
                               dataset=f"npz:{cifar20}")
    best, skips, dead = (evaluator.compute(a, evaluator.proxies) for a in (CONVS, SKIPS,
                                                                          ALL_NONE))
    for name in evaluator.proxies:
        assert best[name] > skips[name] > dead[name], name


@pytest.mark.integration
def test_combinations_rank_vote_and_place_one_arch_in_a_reference():
    scores = {"synflow": [1e10, 1e20, 1e30, 0.0], "nwot": [200.0, 190.0, 250.0, 100.0]}
    rank = combine.mean_rank(scores)
    assert rank.tolist() == pytest.approx([0.5, 0.5, 1.0, 0.0])
    z = combine.zscore_mean(scores)
    assert int(np.argmax(z)) == 2 and int(np.argmin(z)) == 3
    assert np.all(np.abs(z) <= combine.Z_CLIP)
    # one arch against a reference population: percentiles, ties count half
    assert combine.percentile_against({"nwot": 190.0}, scores) == pytest.approx(0.375)
    assert combine.percentile_against({"synflow": 1e40, "nwot": 0.0}, scores) == 0.5
    with pytest.raises(ValueError, match="no scores for proxy 'zen'"):
        combine.percentile_against({"zen": 1.0}, scores)
    with pytest.raises(ValueError, match="same, non-zero count"):
        combine.mean_rank({"nwot": [1.0], "zen": [1.0, 2.0]})
    quantiles = {"synflow": [0.0, 10.0, 20.0], "nwot": [100.0, 100.0, 100.0, 200.0, 300.0]}
    assert combine.fixed_score({"synflow": math.exp(15.0)}, quantiles) == pytest.approx(0.75)
    # outside the reference range: strictly ordered, within OUTSIDE_TAIL of the end
    tail = combine.OUTSIDE_TAIL
    assert -tail < combine.fixed_score({"synflow": 0.0}, quantiles) < 0.0  # below all
    assert 1.0 < combine.fixed_score({"synflow": 1e300}, quantiles) < 1.0 + tail
    above = [combine.fixed_score({"synflow": math.exp(v)}, quantiles) for v in (21, 25, 40, 80)]
    below = [combine.fixed_score({"synflow": math.exp(v)}, quantiles) for v in (-9, -5, -1)]
    assert 1.0 < above[0] < above[1] < above[2] < above[3] < 1.0 + tail
    assert -tail < below[0] < below[1] < below[2] < 0.0
    assert combine.fixed_score({"nwot": 100.0}, quantiles) == pytest.approx(0.25)  # tie run
    assert combine.fixed_score({"nwot": 250.0, "synflow": 1.0}, quantiles) == \
        pytest.approx((0.875 + 0.0) / 2)
    with pytest.raises(ValueError, match="no reference quantiles for proxy 'zen'"):
        combine.fixed_score({"zen": 1.0}, quantiles)
    assert combine.transform("jacov", -20.0) > combine.transform("jacov", -400.0)
    assert combine.transform("grasp", -3.0) < 0 < combine.transform("grasp", 3.0)


def test_the_default_battery_is_cheap_and_not_fitted_on_nb201_labels():
    """The default is `combine.DEFAULT_BATTERY` (chosen by bench/proxies.py on cells other
    than those it is reported on); a proxy fitted on NB201 labels is never part of it."""
    assert DEFAULT_PROXIES == combine.DEFAULT_BATTERY == ("meco",)
    assert combine.DEFAULT_AGGREGATE == "mean_rank"
    assert not set(DEFAULT_PROXIES) & combine.FITTED_ON_NB201_LABELS
    assert "evolved.nb201" in combine.FITTED_ON_NB201_LABELS and "evolved.nb201" in ALL
    assert all(p in combine.NB201_QUANTILES for p in DEFAULT_PROXIES)


def test_every_proxy_has_nb201_reference_quantiles():
    assert set(combine.NB201_QUANTILES) == set(ALL)
    for name, quantiles in combine.NB201_QUANTILES.items():
        assert len(quantiles) == 21 and quantiles == sorted(quantiles), name
        assert quantiles[0] < quantiles[-1], name


@pytest.mark.integration
def test_proxy_evaluator_on_a_digits_shaped_space():
    space = get_space("nb201", channels=4, cells_per_stage=1, input_size=8, input_channels=1)
    evaluator = get_evaluator("proxy", space)
    assert evaluator.name == "proxy" and not evaluator.cheap
    assert evaluator.proxies == list(DEFAULT_PROXIES)
    assert evaluator.data_key() == "digits|batch=20|seed=0"
    assert evaluator.metric_names() == ({f"proxy.{p}" for p in DEFAULT_PROXIES}
                                        | {"score", "params", "flops", "proxy_time_s",
                                           "proxy_cached"})
    x, y = evaluator.batch()
    assert tuple(x.shape) == (20, 1, 8, 8) and y.dtype == torch.long and int(y.max()) < 10
    key = space.key(CONVS)
    result = evaluator.evaluate(CONVS, key)
    assert set(result.metrics) == evaluator.metric_names()
    assert result.params == space.params(CONVS) and result.flops == space.flops(CONVS)
    again = evaluator.evaluate(CONVS, key)
    assert {k: v for k, v in again.metrics.items() if k != "proxy_time_s"} == \
        {k: v for k, v in result.metrics.items() if k != "proxy_time_s"}
    expected = combine.fixed_score({p: result.metrics[f"proxy.{p}"] for p in DEFAULT_PROXIES})
    assert result.metrics["score"] == pytest.approx(expected)
    first = DEFAULT_PROXIES[0]
    assert evaluator.proxy_value(CONVS, key, first) == result.metrics[f"proxy.{first}"]
    # every computed (not analytic) proxy is a measurement under the cache device
    assert evaluator.cache_device() == \
        f"proxy:{evaluator.network_key()}|digits|batch=20|seed=0"
    wider = get_evaluator("proxy", get_space("nb201", channels=8, cells_per_stage=1,
                                             input_size=8, input_channels=1))
    assert wider.network_key() != evaluator.network_key()  # another network, another cache
    shallow, deep = (get_evaluator("proxy", get_space("nb201", cells_per_stage=n)).network_key()
                     for n in (1, 5))
    assert shallow != deep  # their all-none and all-pooling cells have equal params
    assert {(m.device, m.metric, m.source) for m in result.measurements} == \
        {(evaluator.cache_device(), p, "measured") for p in DEFAULT_PROXIES if p != "params"}
    cached = {m.metric: m.value + 1.0 for m in result.measurements}  # marked: reused, not redone
    reused = evaluator.evaluate_cached(CONVS, key, cached)
    assert reused.measurements == [] and reused.metrics["proxy_cached"] == len(cached)
    assert all(reused.metrics[f"proxy.{p}"] == v for p, v in cached.items())
    worse = evaluator.evaluate(ALL_NONE, space.key(ALL_NONE))
    assert worse.metrics["score"] < result.metrics["score"]


def test_cifar_shaped_space_falls_back_to_gaussian_data_or_reads_a_dataset(tiny, cifar20):
    space, _ = tiny
    fallback = get_evaluator("proxy", space, proxies=["snip", "synflow"], batch_size=4)
    assert fallback.data_key() == "gaussian|batch=4|seed=0"
    x, _ = fallback.batch()
    assert tuple(x.shape) == (4, 3, 16, 16)
    real = get_evaluator("proxy", space, proxies=["snip"], dataset=f"npz:{cifar20}",
                         batch_size=64)
    x, y = real.batch()  # 20 images (all of them), resized to the space's 16x16 input
    assert tuple(x.shape) == (20, 3, 16, 16) and len(y) == 20
    assert math.isfinite(real.evaluate(CONVS, space.key(CONVS)).metrics["score"])


@pytest.mark.parametrize(("args", "message"), [
    ({"proxies": ["synflow", "nope"]}, r"^proxies\[1\] is wrong: unknown proxy 'nope'"),
    ({"proxies": "synflow"}, "^proxies must be a non-empty list"),
    ({"proxies": []}, "^proxies must be a non-empty list"),
    ({"batch_size": 1}, "^batch_size must be an integer >= 2"),
    ({"seed": -1}, "^seed must be an integer >= 0"),
    ({"dataset": "digits"}, "expects 3 input channels but dataset digits has 1"),
    ({"dataset": "imagenet"}, "^dataset must be"),
])
def test_proxy_evaluator_rejects_bad_arguments(tiny, args, message):
    space, _ = tiny
    with pytest.raises(ValueError, match=message):
        ProxyEvaluator(space, **args)
