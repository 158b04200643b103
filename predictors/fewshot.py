"""A few-label accuracy predictor on training-free proxy features.

With tens of evaluated architectures, a predictor on the one-hot architecture encoding has
too little data; training-free proxies are already strongly correlated with accuracy
(NAS-Bench-201: synflow 0.77, nwot 0.79, their combination 0.90 Spearman) and cost no
labels. `ProxyFeaturePredictor` is a small GBDT (shallow trees, few of them) on the
proxies' monotone transforms (`combine.transform`: logs of the positive-scale proxies, incl.
params and FLOPs), fitted on the few labelled architectures; it then ranks the rest.

Two ways to use it (`bench/proxy_learning.py` measures both):

- plain: `fit(proxy_features(scores)[labelled], accuracy)`;
- residual: the zero-label combined score (`combine.mean_rank` over the whole population)
  is the starting point and the trees learn a correction: targets and the score are put on
  one scale (`rank_scale`: ranks in [0, 1]) and the score is the `base_margin`
  (`few_label_scores` does both). With few labels the correction is small, so the ranking
  starts at the zero-label one instead of at nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import combine
from ._base import register_predictor
from .gbdt import GBDTPredictor

#: Proxies used as features by default: those cheap enough to score every candidate (grasp
#: and zen are slow and weak on NAS-Bench-201, see bench/results/proxies.json).
FEATURE_PROXIES = ("synflow", "jacov", "nwot", "snip", "grad_norm", "fisher", "params", "flops")
#: The zero-label combination (the proxy evaluator's default battery).
ZERO_LABEL_PROXIES = ("synflow", "jacov", "params")
#: The residual form's default `reg_lambda` (see `few_label_scores`).
RESIDUAL_LAMBDA = 5.0


def proxy_features(scores: Mapping[str, Sequence[float]],
                   names: Sequence[str] = FEATURE_PROXIES) -> np.ndarray:
    """A (architectures x proxies) matrix of `combine.transform`ed proxy values."""
    missing = [n for n in names if n not in scores]
    if missing:
        raise ValueError(f"no scores for proxies {', '.join(missing)}")
    columns = [[combine.transform(n, v) for v in scores[n]] for n in names]
    if len({len(c) for c in columns}) != 1:
        raise ValueError("every proxy needs one score per architecture")
    return np.asarray(columns, dtype=np.float64).T


def rank_scale(values: Sequence[float]) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share their mean rank; one value maps to 0.5)."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return np.full(len(v), 0.5)
    return (rankdata(v) - 1.0) / (len(v) - 1)


@register_predictor
class ProxyFeaturePredictor(GBDTPredictor):
    """GBDT with few-label defaults: 40 depth-2 trees, learning rate 0.1, leaves of at
    least 2 rows, all features per tree (there are only ~8)."""

    name = "proxy_gbdt"
    description = "small GBDT on training-free proxy features, for tens of labels"

    def __init__(self, seed: int = 0, *, n_estimators: int = 40, max_depth: int = 2,
                 learning_rate: float = 0.1, subsample: float = 0.8,
                 colsample_bytree: float = 1.0, min_child_weight: float = 2.0,
                 reg_lambda: float = 1.0, init_model: GBDTPredictor | None = None) -> None:
        super().__init__(seed, n_estimators=n_estimators, max_depth=max_depth,
                         learning_rate=learning_rate, subsample=subsample,
                         colsample_bytree=colsample_bytree, min_child_weight=min_child_weight,
                         reg_lambda=reg_lambda, init_model=init_model)


def few_label_scores(features: np.ndarray, labelled: Sequence[int], labels: Sequence[float],
                     *, zero_label: Sequence[float] | None = None, seed: int = 0,
                     **params: Any) -> np.ndarray:
    """Scores (higher is better) for every row of `features` after fitting a
    `ProxyFeaturePredictor` on rows `labelled` with accuracies `labels`.

    With `zero_label` (a score per row, e.g. `combine.mean_rank` of the population), the
    residual form: the targets are the labels' ranks in [0, 1], the margin is the rank of
    the zero-label score in the population, and the trees fit the difference (with
    `reg_lambda` RESIDUAL_LAMBDA unless given)."""
    features = np.asarray(features, dtype=np.float64)
    idx = np.asarray(labelled, dtype=np.int64)
    if zero_label is None:
        model = ProxyFeaturePredictor(seed, **params)
        return model.fit(features[idx], labels).predict(features)
    # a heavier L2 penalty on the leaves shrinks the correction: chosen among 1, 5 and 20
    # on valid_acc of the held-out cells (bench/proxy_learning.py reports all three)
    params.setdefault("reg_lambda", RESIDUAL_LAMBDA)
    model = ProxyFeaturePredictor(seed, **params)
    margin = rank_scale(zero_label)
    model.fit(features[idx], rank_scale(labels), base_margin=margin[idx])
    return model.predict(features, base_margin=margin)
