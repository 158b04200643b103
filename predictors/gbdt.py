"""Gradient-boosted trees (XGBoost) as an architecture-performance predictor (GBDT-NAS,
Luo et al. 2020).

Defaults are for small data (tens to a few hundred labelled architectures with one-hot
features): shallow trees, a moderate learning rate, row and column subsampling, one thread
(deterministic per seed, and cheap on a shared machine).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Predictor, register_predictor


def _check(name: str, value: Any, *, low: float, high: float = float("inf"),
           integer: bool = False, open_low: bool = False) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        ok = ok and isinstance(value, int)
    if ok:
        ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f"> {low}" if open_low else f">= {low}"
        raise ValueError(f"{name} must be {kind} {bound}"
                         + (f" and <= {high}" if high != float("inf") else "")
                         + f", got {value!r}")
    return value


@register_predictor
class GBDTPredictor(Predictor):
    """XGBoost regressor (squared error), deterministic given `seed`.

    `init_model`: a fitted GBDTPredictor whose trees this one continues (XGBoost's continued
    training): `fit` adds `n_estimators` trees to a copy of them, fitted to the residuals of
    the initial model; `init_model` itself is left unchanged.
    """

    name = "gbdt"
    description = "gradient-boosted decision trees (XGBoost), squared error"

    def __init__(
        self,
        seed: int = 0,
        *,
        n_estimators: int = 100,
        max_depth: int = 4,
        learning_rate: float = 0.1,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        min_child_weight: float = 1.0,
        reg_lambda: float = 1.0,
        init_model: GBDTPredictor | None = None,
    ) -> None:
        super().__init__(seed)
        self.n_estimators = _check("n_estimators", n_estimators, low=1, integer=True)
        self.max_depth = _check("max_depth", max_depth, low=1, high=16, integer=True)
        self.learning_rate = _check("learning_rate", learning_rate, low=0, high=1,
                                    open_low=True)
        self.subsample = _check("subsample", subsample, low=0, high=1, open_low=True)
        self.colsample_bytree = _check("colsample_bytree", colsample_bytree, low=0, high=1,
                                       open_low=True)
        self.min_child_weight = _check("min_child_weight", min_child_weight, low=0)
        self.reg_lambda = _check("reg_lambda", reg_lambda, low=0)
        if init_model is not None and (not isinstance(init_model, GBDTPredictor)
                                       or not init_model.fitted):
            raise ValueError("init_model must be a fitted GBDTPredictor")
        self.init_model = init_model
        self.booster: Any = None

    def params(self) -> dict[str, Any]:
        """The XGBoost training parameters."""
        return {
            "objective": "reg:squarederror",
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "tree_method": "hist",
            "nthread": 1,
            "seed": self.seed,
            "verbosity": 0,
        }

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        import xgboost as xgb

        init = None
        if self.init_model is not None:
            if self.init_model.n_features != X.shape[1]:
                raise ValueError(f"X has {X.shape[1]} features, init_model was fitted on "
                                 f"{self.init_model.n_features}")
            init = self.init_model.booster
        data = xgb.DMatrix(X, label=y, nthread=1)
        self.booster = xgb.train(self.params(), data, num_boost_round=self.n_estimators,
                                 xgb_model=init)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self.booster.inplace_predict(X)

    def feature_importance(self) -> np.ndarray:
        """Total gain of the splits on each feature (zeros for unused features)."""
        if self.booster is None or self.n_features is None:
            raise RuntimeError("feature_importance called before fit")
        out = np.zeros(self.n_features)
        for name, gain in self.booster.get_score(importance_type="total_gain").items():
            out[int(name.removeprefix("f"))] = gain
        return out
