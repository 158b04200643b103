"""The `Predictor` contract: a regressor from architecture features to a score.

A predictor is fitted on a feature matrix `X` (rows: architectures, e.g. `space.encode()`
plus free statistics) and targets `y`, then ranks unseen rows by `predict`. Higher
predictions mean better architectures whenever the targets are "higher is better".

The base class validates every input (2-D finite `X`, 1-D finite `y` of matching length, the
same number of features at predict time as at fit time) and raises ValueError otherwise, so
subclasses implement only `_fit` and `_predict` on clean arrays.

`base_margin` (XGBoost's name): a prior prediction per row that the model corrects, rather
than learning the targets from scratch. The base class handles it generically by fitting the
residual `y - base_margin` and adding the margin back at predict time; the same margin
source (e.g. a pretrained predictor) must then be given to `predict`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, TypeVar

import numpy as np

from search_spaces.registry import Registry, check_class

P = TypeVar("P", bound="Predictor")


class Predictor(abc.ABC):
    """A seeded regressor; the same seed and data give the same predictions."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, seed: int = 0) -> None:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        self.n_features: int | None = None
        self._uses_margin = False

    # ---- the public API ----------------------------------------------------------------------
    def fit(self: P, X: Any, y: Any, *, base_margin: Any = None) -> P:
        """Fit on rows `X` (n x d) and targets `y` (n); returns self."""
        X = _matrix(X, "X")
        y = _vector(y, "y", X.shape[0])
        margin = None if base_margin is None else _vector(base_margin, "base_margin", X.shape[0])
        if X.shape[0] < 1:
            raise ValueError("fit needs at least one row")
        self._fit(X, y if margin is None else y - margin)
        self.n_features = X.shape[1]
        self._uses_margin = margin is not None
        return self

    def predict(self, X: Any, *, base_margin: Any = None) -> np.ndarray:
        """Predictions (float64, shape (n,)) for rows `X`; `base_margin` exactly when the
        model was fitted with one."""
        if self.n_features is None:
            raise RuntimeError(f"{type(self).__name__}.predict called before fit")
        X = _matrix(X, "X")
        if X.shape[1] != self.n_features:
            raise ValueError(f"X has {X.shape[1]} features, the model was fitted on "
                             f"{self.n_features}")
        if (base_margin is None) == self._uses_margin:
            state = "with" if self._uses_margin else "without"
            raise ValueError(f"the model was fitted {state} a base_margin; predict must be too")
        out = np.asarray(self._predict(X), dtype=np.float64).reshape(-1)
        if base_margin is not None:
            out = out + _vector(base_margin, "base_margin", X.shape[0])
        return out

    @property
    def fitted(self) -> bool:
        return self.n_features is not None

    # ---- what a subclass implements ----------------------------------------------------------
    @abc.abstractmethod
    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        """Fit on validated float32 `X` (n x d, n >= 1) and float64 `y` (n)."""

    @abc.abstractmethod
    def _predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions for validated float32 `X` with the fitted number of columns."""


def _matrix(X: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a numeric 2-D array: {exc}") from None
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows x features), got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError(f"{what} has no feature columns")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return arr


def _vector(v: Any, what: str, rows: int) -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a numeric 1-D array: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != rows:
        raise ValueError(f"{what} has {arr.shape[0]} values for {rows} rows of X")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return arr


#: The accuracy predictors by name, with the plugins of entry-point group `nas.predictors`.
PREDICTORS: Registry[type[Predictor]] = Registry("predictor", "nas.predictors",
                                                 check=check_class(Predictor, "predictor"))


def register_predictor(cls: type[Predictor]) -> type[Predictor]:
    """Class decorator: make a predictor available by its `name`."""
    return PREDICTORS.decorator()(cls)


def list_predictors() -> list[str]:
    return PREDICTORS.names()


def predictor_class(name: str) -> type[Predictor]:
    return PREDICTORS.get(name)


def get_predictor(name: str, seed: int = 0, **kwargs: Any) -> Predictor:
    return predictor_class(name)(seed=seed, **kwargs)
