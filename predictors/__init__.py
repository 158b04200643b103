"""What scores an architecture without training it fully (accuracy and latency predictors,
training-free proxies, rank-correlation metrics). Imports flow search_spaces -> predictors."""

from .metrics import kendall_tau, spearman

__all__ = ["kendall_tau", "spearman"]
