"""`check_proxy` on every registered proxy (one test id per check), and on broken proxies,
which it must catch."""

from __future__ import annotations

import random

import pytest
import torch

from predictors.proxies import Proxy, list_proxies
from predictors.proxies.checks import CHECKS, check_proxy


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.integration
@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", list_proxies())
def test_registered_proxy_passes(name, check):
    check_proxy(name, checks=(check,))


def test_every_check_runs_by_default_and_unknown_checks_are_refused():
    check_proxy("params")  # all of CHECKS
    with pytest.raises(ValueError, match="unknown checks"):
        check_proxy("params", checks=("no such check",))


# ---- broken proxies (never registered: `Proxy` objects handed to the check) -----------------
def _sum_of_weights(model, inputs, targets, loss_fn) -> float:  # noqa: ANN001
    """A sound proxy: the sum of the absolute weights."""
    return float(sum(p.detach().abs().sum() for p in model.parameters()))


def _nan_on_dead_cells(model, inputs, targets, loss_fn) -> float:  # noqa: ANN001
    """Divides by the outputs' spread over the batch, which is 0 for a cell of `none` edges."""
    with torch.no_grad():
        out = model(inputs)
    return float(out.abs().mean() / out.std(dim=0).mean())


def _unseeded(model, inputs, targets, loss_fn) -> float:  # noqa: ANN001
    """Noise from a generator that no seed reaches."""
    return _sum_of_weights(model, inputs, targets, loss_fn) + random.SystemRandom().random()


def _leaves_a_hook(model, inputs, targets, loss_fn) -> float:  # noqa: ANN001
    """Counts forward calls with a hook it forgets to remove."""
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    model(inputs)
    return float(len(calls))


def _scales_the_inputs(model, inputs, targets, loss_fn) -> float:  # noqa: ANN001
    """Normalises the batch in place."""
    inputs.div_(inputs.abs().max())
    return float(model(inputs).detach().abs().mean())


def _reads_the_batch(model, inputs, targets, loss_fn) -> float:  # noqa: ANN001
    """Claims to be data-free but sums the batch."""
    return float(inputs.sum())


def _leaves_double(model, inputs, targets, loss_fn) -> float:  # noqa: ANN001
    """Computes in float64 and leaves the model there."""
    model.double()
    return float(model(inputs.double()).detach().abs().mean())


def _needs_weights(model, inputs, targets, loss_fn) -> float:  # noqa: ANN001
    """Reads the first weight without asking whether there is one."""
    return float(next(model.parameters()).abs().mean())


BROKEN = [
    pytest.param(Proxy("nan", _nan_on_dead_cells, True, "mean over spread"),
                 "returns a finite float", id="nan"),
    pytest.param(Proxy("unseeded", _unseeded, True, "noisy"), "deterministic per seed",
                 id="unseeded"),
    pytest.param(Proxy("hook", _leaves_a_hook, True, "forward calls"), "removes its hooks",
                 id="hook"),
    pytest.param(Proxy("scales", _scales_the_inputs, True, "in place"),
                 "leaves inputs unchanged", id="changes-inputs"),
    pytest.param(Proxy("reads", _reads_the_batch, False, "claims data-free"),
                 "data free ignores the batch", id="data-free-reads-the-batch"),
    pytest.param(Proxy("double", _leaves_double, True, "float64"), "leaves the model usable",
                 id="leaves-float64"),
    pytest.param(Proxy("weights", _needs_weights, True, "first weight"),
                 "model without weights", id="no-weights-crash"),
    pytest.param(Proxy("quiet", _sum_of_weights, True, ""), "has a description",
                 id="no-description"),
]


@pytest.mark.parametrize("proxy, check", BROKEN)
def test_check_proxy_catches_a_broken_proxy(proxy, check):
    with pytest.raises(AssertionError, match=f"proxy '{proxy.name}' fails check '{check}'"):
        check_proxy(proxy, checks=(check,))


@pytest.mark.integration
def test_a_sound_proxy_passes_every_check():
    check_proxy(Proxy("weights", _sum_of_weights, True, "sum of |w|"))


def test_a_reference_is_checked_like_a_registered_proxy():
    check_proxy("tests.test_proxy_checks:_sum_of_weights", checks=("returns a finite float",))
