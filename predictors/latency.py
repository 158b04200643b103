"""Latency predictors: learn a device's latency from a few hundred measured architectures.

- `AdditiveLUT` (FBNet's look-up table): latency = base + the sum over the architecture's
  decisions of a per-(decision, choice) cost. Where the operators can be timed one by one
  (this CPU) the table can be measured; for a device we cannot reach (a phone, an FPGA) it is
  fitted to whole-network measurements by ridge least squares on the one-hot encoding.
- `GBDTLatency` (nn-Meter's accuracy with a fraction of the measurements): gradient-boosted
  trees on the encoding plus FLOPs, params and the LUT's own prediction, fitted to the log
  latency, so the trees model the non-additive part (kernel fusion, parallelism on a GPU)
  and relative errors weigh equally across fast and slow networks.

Both are deterministic: the same measurements give the same model (and `version()`), so a
prediction stored in the database names the model that made it.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from search_spaces import Arch, SearchSpace
from search_spaces.registry import Registry, check_class


def register_latency_predictor(cls: type[LatencyPredictor]) -> type[LatencyPredictor]:
    """Class decorator: make a latency predictor available by its `name`."""
    return LATENCY_PREDICTORS.decorator()(cls)


def list_latency_predictors() -> list[str]:
    return LATENCY_PREDICTORS.names()


def get_latency_predictor(name: str, space: SearchSpace, **args: Any) -> LatencyPredictor:
    """Build a registered latency predictor (UnknownComponentError, a ValueError too, for an
    unknown name)."""
    return LATENCY_PREDICTORS.get(name)(space, **args)


class LatencyPredictor(abc.ABC):
    """Fit on (architecture, latency) pairs of one device; predict for any architecture."""

    name: ClassVar[str] = ""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self._fingerprint = ""

    def fit(self, archs: Sequence[Arch], latencies: Sequence[float]) -> LatencyPredictor:
        y = np.asarray(latencies, dtype=np.float64)
        if len(archs) != len(y):
            raise ValueError(f"{len(archs)} architectures but {len(y)} latencies")
        if len(y) < 2:
            raise ValueError("a latency predictor needs at least 2 measurements")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("latencies must be finite and positive")
        keys = [self.space.key(a) for a in archs]
        digest = hashlib.sha256(json.dumps([self.name, self.space.name, keys, y.tolist(),
                                            self.settings()]).encode()).hexdigest()
        self._fingerprint = digest[:12]
        self._fit(archs, y)
        return self

    def version(self) -> str:
        """Names the model: kind, settings and the measurements it was fitted on."""
        if not self._fingerprint:
            raise RuntimeError("the predictor is not fitted")
        return f"{self.name}-{self._fingerprint}"

    def settings(self) -> dict[str, Any]:
        return {}

    @abc.abstractmethod
    def _fit(self, archs: Sequence[Arch], y: np.ndarray) -> None: ...

    @abc.abstractmethod
    def predict(self, archs: Sequence[Arch]) -> np.ndarray: ...

    def features(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.stack([self.space.latency_encoding(a) for a in archs]).astype(np.float64)


#: The latency predictors by name, with the plugins of `nas.latency_predictors`.
LATENCY_PREDICTORS: Registry[type[LatencyPredictor]] = Registry(
    "latency predictor", "nas.latency_predictors",
    check=check_class(LatencyPredictor, "latency predictor"))


@register_latency_predictor
class AdditiveLUT(LatencyPredictor):
    """base + sum of per-(decision, choice) costs, by ridge least squares (`alpha`)."""

    name = "lut"

    def __init__(self, space: SearchSpace, alpha: float = 1e-3) -> None:
        super().__init__(space)
        if not isinstance(alpha, int | float) or alpha < 0:
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.base = 0.0
        self.table: np.ndarray | None = None

    def settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _fit(self, archs: Sequence[Arch], y: np.ndarray) -> None:
        x = self.features(archs)
        mean_x, mean_y = x.mean(axis=0), y.mean()
        xc = x - mean_x
        gram = xc.T @ xc + self.alpha * len(y) * np.eye(x.shape[1])
        self.table = np.linalg.solve(gram, xc.T @ (y - mean_y))
        self.base = float(mean_y - mean_x @ self.table)

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        if self.table is None:
            raise RuntimeError("the predictor is not fitted")
        return self.base + self.features(archs) @ self.table

    def cost_table(self) -> dict[str, Any]:
        """The learned table: base and the cost of each feature of `latency_encoding`."""
        if self.table is None:
            raise RuntimeError("the predictor is not fitted")
        return {"base": self.base, "costs": self.table.tolist()}


@register_latency_predictor
class GBDTLatency(LatencyPredictor):
    """xgboost on [encoding, log FLOPs, log params, LUT prediction] -> log latency."""

    name = "gbdt"

    def __init__(self, space: SearchSpace, trees: int = 400, depth: int = 4,
                 learning_rate: float = 0.05, seed: int = 0) -> None:
        super().__init__(space)
        for field, value, low in (("trees", trees, 1), ("depth", depth, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")
        if not isinstance(learning_rate, int | float) or not 0 < learning_rate <= 1:
            raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate!r}")
        self.trees, self.depth, self.learning_rate, self.seed = trees, depth, learning_rate, seed
        self.lut = AdditiveLUT(space)
        self.model: Any = None

    def settings(self) -> dict[str, Any]:
        return {"trees": self.trees, "depth": self.depth, "learning_rate": self.learning_rate,
                "seed": self.seed}

    def _design(self, archs: Sequence[Arch]) -> np.ndarray:
        cost = np.array([[np.log(max(self.space.flops(a), 1)), np.log(max(self.space.params(a), 1))]
                         for a in archs])
        lut = np.log(np.clip(self.lut.predict(archs), 1e-6, None))[:, None]
        return np.hstack([self.features(archs), cost, lut])

    def _fit(self, archs: Sequence[Arch], y: np.ndarray) -> None:
        import xgboost

        self.lut._fit(archs, y)
        self.model = xgboost.XGBRegressor(
            n_estimators=self.trees, max_depth=self.depth, learning_rate=self.learning_rate,
            subsample=0.9, colsample_bytree=0.9, min_child_weight=1.0, reg_lambda=1.0,
            random_state=self.seed, n_jobs=1, tree_method="exact")
        # start from the LUT's log prediction: the trees learn the correction
        design = self._design(archs)
        self.model.fit(design, np.log(y), base_margin=design[:, -1])

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("the predictor is not fitted")
        design = self._design(archs)
        return np.exp(self.model.predict(design, base_margin=design[:, -1]))


def accuracy_report(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Share within +-10% / +-5% of the truth, RMSE, MAPE and Spearman."""
    from .metrics import spearman

    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    relative = np.abs(predicted - actual) / actual
    return {
        "within_10pct": float(np.mean(relative <= 0.10)),
        "within_5pct": float(np.mean(relative <= 0.05)),
        "rmse": float(np.sqrt(np.mean((predicted - actual) ** 2))),
        "mape": float(np.mean(relative)),
        "spearman": float(spearman(predicted, actual)),
        "n": int(len(actual)),
    }
