"""`check_predictor` on every registered latency predictor (one test id per check), through
`LatencyAsPredictor`; and the latency contract's own input checks, which the adapter's
`Predictor` validation would otherwise stand in for."""

from __future__ import annotations

import math

import numpy as np
import pytest

from predictors.checks import CHECKS, LatencyAsPredictor, check_latency_predictor, synthetic_task
from predictors.latency import get_latency_predictor, list_latency_predictors
from search_spaces import get_space


@pytest.mark.integration
@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", list_latency_predictors())
def test_registered_latency_predictor_passes(name, check):
    check_latency_predictor(name, checks=(check,))


def test_the_adapter_keeps_the_latency_order():
    X, y = synthetic_task(80, 0)
    model = LatencyAsPredictor("lut").fit(X, y)
    assert model.model.predict(model._archs(X[:5])).min() > 0, "latencies fed must be positive"
    pred = model.predict(X)
    assert np.corrcoef(pred, y)[0, 1] > 0.8, "the shift must keep the targets' order"


def test_check_predictor_refuses_unknown_checks():
    with pytest.raises(ValueError, match="unknown checks"):
        check_latency_predictor("lut", checks=("no such check",))


@pytest.mark.parametrize("name", list_latency_predictors())
def test_latency_fit_refuses_bad_measurements(name):
    space = get_space("nb201")
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(6)]
    good = [1.0 + i for i in range(6)]
    for latencies, message in [(good[:-1], "architectures but"), ([1.0], "at least 2"),
                               ([*good[:-1], 0.0], "finite and positive"),
                               ([*good[:-1], math.nan], "finite and positive")]:
        chosen = archs[:len(latencies)] if len(latencies) == 1 else archs
        with pytest.raises(ValueError, match=message):
            get_latency_predictor(name, space).fit(chosen, latencies)
    with pytest.raises(RuntimeError, match="not fitted"):
        get_latency_predictor(name, space).predict(archs)
    with pytest.raises(RuntimeError, match="not fitted"):
        get_latency_predictor(name, space).version()
