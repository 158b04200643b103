"""`check_predictor`: the conformance suite every predictor must pass.

Promises checked (on synthetic one-hot data, like `SearchSpace.encode` features):
- `fit` returns the predictor; `predict` returns finite floats, one per row, and does not
  change its input;
- the same seed and data give exactly the same predictions (a refit on resume gives the same
  model), and refitting the same predictor on the same data does too;
- on a learnable task (a linear function of the one-hot features plus an interaction) it
  ranks 400 unseen rows better than a constant predictor: Spearman >= 0.5 after 150 rows
  (a constant has no rank correlation at all);
- it handles tiny training sets (2 to 5 rows, constant targets included);
- `base_margin` round trip: a model fitted with a margin predicts with one, and a margin
  that already explains the targets leaves a small correction;
- it refuses inconsistent inputs with ValueError (X not 2-D, y not 1-D, row counts that
  differ, NaN targets, a different number of features at predict time) and predicting
  before fitting with RuntimeError or ValueError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from search_spaces._conformance import check_runner

from ._base import Predictor
from .metrics import spearman

PredictorFactory = Callable[[int], Predictor]
DECISIONS, CHOICES = 6, 5  # an nb201-like one-hot encoding: 30 features
MIN_SPEARMAN = 0.5


CHECKS = ("fit predict shapes", "deterministic per seed", "learns a ranking",
          "tiny training sets", "base margin", "refuses bad shapes")


def check_predictor(predictor_factory: PredictorFactory, *, seed: int = 0,
                    checks: tuple[str, ...] = CHECKS) -> None:
    """Run the `checks` (default: all of `CHECKS`, in order); raises AssertionError naming
    the failed check.

    `predictor_factory(seed)` must build a fresh, unfitted predictor seeded with `seed`."""
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    probe = predictor_factory(seed)
    if not isinstance(probe, Predictor):
        raise AssertionError(f"the factory built a {type(probe).__name__}, not a Predictor")
    run = check_runner("predictor", probe.name or type(probe).__name__, predictor_factory)
    for label in checks:
        run(globals()["_check_" + label.replace(" ", "_")], seed)


def check_latency_predictor(name: str, *, seed: int = 0, checks: tuple[str, ...] = CHECKS,
                            **args: Any) -> None:
    """`check_predictor` on the registered latency predictor `name` (built with `args`),
    through `LatencyAsPredictor`."""
    check_predictor(lambda s: LatencyAsPredictor(name, seed=s, **args), seed=seed,
                    checks=checks)


class LatencyAsPredictor(Predictor):
    """A latency predictor (`predictors.latency`) seen through the `Predictor` contract, so
    that `check_predictor` runs on it. A row of the synthetic task (6 decisions x 5 choices,
    one-hot) is the NB201 cell with those operations; targets become positive latencies by a
    shift fixed at fit time (`y - min(y) + 1`, undone at predict time), which keeps their
    order and differences. The seed reaches a latency predictor that takes one."""

    def __init__(self, latency_predictor: str, seed: int = 0, **args: Any) -> None:
        from search_spaces import get_space

        from .latency import LATENCY_PREDICTORS

        super().__init__(seed)
        self.cls = LATENCY_PREDICTORS.get(latency_predictor)
        self.name = f"latency {latency_predictor}"  # type: ignore[misc]
        if "seed" in inspect.signature(self.cls).parameters:
            args = {"seed": self.seed, **args}
        self.args = args
        self.space = get_space("nb201")
        self.model: Any = None
        self.shift = 0.0

    def _archs(self, X: np.ndarray) -> list[dict[str, Any]]:
        if X.shape[1] != DECISIONS * CHOICES:
            raise ValueError(f"X has {X.shape[1]} features, not the {DECISIONS * CHOICES} of "
                             f"{DECISIONS} one-hot decisions of {CHOICES} choices")
        dna = X.reshape(len(X), DECISIONS, CHOICES).argmax(axis=2)
        return [self.space.from_dna([int(i) for i in row]) for row in dna]

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.shift = 1.0 - float(y.min())
        self.model = self.cls(self.space, **self.args).fit(self._archs(X), y + self.shift)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(self._archs(X)), dtype=np.float64) - self.shift


def synthetic_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` random one-hot rows and a deterministic learnable target (the same function for
    every seed): per-choice weights plus a bonus when decisions 0 and 1 agree."""
    rng = np.random.default_rng(seed)
    dna = rng.integers(CHOICES, size=(n, DECISIONS))
    X = np.zeros((n, DECISIONS * CHOICES), dtype=np.float32)
    X[np.arange(n)[:, None], np.arange(DECISIONS) * CHOICES + dna] = 1.0
    weights = np.cos(np.arange(DECISIONS * CHOICES) * 1.3)
    y = X @ weights + 1.5 * (dna[:, 0] == dna[:, 1])
    return X, y


def _check_fit_predict_shapes(factory: PredictorFactory, seed: int) -> None:
    X, y = synthetic_task(40, seed)
    model = factory(seed)
    returned = model.fit(X, y)
    assert returned is model, f"fit returned {returned!r}, not the predictor itself"
    for rows in (1, 7, 40):
        Xq = synthetic_task(rows, seed + 1)[0]
        before = Xq.copy()
        out = model.predict(Xq)
        assert isinstance(out, np.ndarray), f"predict returned a {type(out).__name__}"
        assert out.shape == (rows,), f"predict on {rows} rows returned shape {out.shape}"
        assert np.issubdtype(out.dtype, np.floating), f"predict returned dtype {out.dtype}"
        assert np.isfinite(out).all(), "predict returned NaN or infinite values"
        assert np.array_equal(Xq, before), "predict changed its input"


def _check_deterministic_per_seed(factory: PredictorFactory, seed: int) -> None:
    X, y = synthetic_task(60, seed)
    Xq = synthetic_task(200, seed + 1)[0]
    first = factory(seed).fit(X, y).predict(Xq)
    second = factory(seed).fit(X, y).predict(Xq)
    assert np.array_equal(first, second), \
        "two predictors with the same seed fitted on the same data predict differently " \
        f"(max difference {np.max(np.abs(first - second)):.3g})"
    model = factory(seed).fit(X, y)
    model.fit(X, y)
    again = model.predict(Xq)
    assert np.array_equal(first, again), "refitting a predictor on the same data changed " \
                                         "its predictions"


def _check_learns_a_ranking(factory: PredictorFactory, seed: int) -> None:
    X, y = synthetic_task(150, seed)
    Xq, yq = synthetic_task(400, seed + 1000)
    pred = factory(seed).fit(X, y).predict(Xq)
    rho = spearman(pred, yq) if np.ptp(pred) > 0 else 0.0  # a constant ranks nothing
    assert rho >= MIN_SPEARMAN, f"Spearman {rho:.3f} on held-out rows of a learnable task " \
                                f"(needs >= {MIN_SPEARMAN}; a constant predictor has 0)"


def _check_tiny_training_sets(factory: PredictorFactory, seed: int) -> None:
    Xq = synthetic_task(10, seed + 1)[0]
    for rows in (2, 3, 5):
        X, y = synthetic_task(rows, seed + rows)
        for targets in (y, np.full(rows, 0.5)):
            out = factory(seed).fit(X, targets).predict(Xq)
            assert out.shape == (10,) and np.isfinite(out).all(), \
                f"after fitting on {rows} rows predict returned {out!r}"


def _check_base_margin(factory: PredictorFactory, seed: int) -> None:
    X, y = synthetic_task(60, seed)
    Xq, yq = synthetic_task(50, seed + 1)
    model = factory(seed).fit(X, y, base_margin=y)  # the margin already explains y
    out = model.predict(Xq, base_margin=yq)
    assert out.shape == (50,) and np.isfinite(out).all(), f"predict returned {out!r}"
    scale = float(np.std(yq))
    assert np.max(np.abs(out - yq)) <= 0.5 * scale, \
        "with a base_margin that explains the targets the prediction strays far from it " \
        f"(max difference {np.max(np.abs(out - yq)):.3g}, target std {scale:.3g})"


def _check_refuses_bad_shapes(factory: PredictorFactory, seed: int) -> None:
    X, y = synthetic_task(20, seed)
    cases = {
        "X with fewer rows than y": (X[:-1], y),
        "y with fewer values than X has rows": (X, y[:-1]),
        "a 1-D X": (X[:, 0], y),
        "a 2-D y": (X, y[:, None]),
        "a NaN target": (X, np.where(np.arange(20) == 3, np.nan, y)),
        "a base_margin of the wrong length": (X, y, y[:-2]),
    }
    for what, args in cases.items():
        margin = args[2] if len(args) > 2 else None
        try:
            factory(seed).fit(args[0], args[1], base_margin=margin)
        except ValueError:
            continue
        raise AssertionError(f"fit accepted {what} (must raise ValueError)")
    try:
        factory(seed).predict(X)
    except (RuntimeError, ValueError):
        pass
    else:
        raise AssertionError("predict before fit did not raise RuntimeError or ValueError")
    model = factory(seed).fit(X, y)
    for what, bad in {"fewer features": X[:, :-1], "more features": np.hstack([X, X[:, :1]]),
                      "a 1-D X": X[0]}.items():
        try:
            model.predict(bad)
        except ValueError:
            continue
        raise AssertionError(f"predict accepted rows with {what} than the model was fitted on"
                             if "features" in what else f"predict accepted {what}")
