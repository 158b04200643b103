"""What scores an architecture without training it fully (accuracy and latency predictors,
training-free proxies, rank-correlation metrics). Imports flow search_spaces -> predictors."""

from ._base import Predictor, get_predictor, list_predictors, predictor_class, register_predictor
from .checks import check_predictor
from .gbdt import GBDTPredictor
from .metrics import kendall_tau, spearman

__all__ = [
    "GBDTPredictor", "Predictor", "check_predictor", "get_predictor", "kendall_tau",
    "list_predictors", "predictor_class", "register_predictor", "spearman",
]

# the few-label predictor on proxy features; `register_evolved_proxies()` makes the formulas
# stored in predictors/data/evolved_proxies.json proxies `evolved.<name>`
from .evolved import register_evolved_proxies  # noqa: E402
from .fewshot import ProxyFeaturePredictor  # noqa: E402

__all__ += ["ProxyFeaturePredictor", "register_evolved_proxies"]
