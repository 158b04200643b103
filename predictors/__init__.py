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
