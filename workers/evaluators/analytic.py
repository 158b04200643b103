"""`analytic` evaluator: the space's exact parameter and FLOP counts, no model built.

Every registered space counts params and FLOPs analytically (tens of microseconds per
architecture, see `bench/spaces.py`), so this evaluator scores any space at table-look-up
speed. Uses: "the smallest / cheapest model" searches (`objectives: [{metric: params, mode:
min}]`, or a `flops` constraint with another objective), sanity checks of a strategy on a
space with no benchmark table, and load tests of the service itself (`tests/test_load.py`,
`bench/load.py`: 100,000 trials).
"""

from __future__ import annotations

from search_spaces import Arch, SearchSpace

from ._base import Evaluation, Evaluator, cost_metric_names, exact_costs, register_evaluator


@register_evaluator
class AnalyticEvaluator(Evaluator):
    """Metrics `params` and `flops` (floats; also stored on the architecture row), and the
    space's other exact `cost_metrics` (the quant space's `bitops`, `model_size_kb`). Takes no
    `evaluator_args`: the counts follow the space and its `space_args` (input size,
    classes)."""

    description = ("exact params and FLOPs counted from the architecture; no model built, nothing "
                   "trained")

    name = "analytic"
    cheap = True
    needs_model = True

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)

    def metric_names(self) -> set[str]:
        return cost_metric_names(self.space)

    def evaluate(self, arch: Arch, key: str) -> Evaluation:
        costs = exact_costs(self.space, arch)
        return Evaluation(dict(costs.metrics), [], costs.params, costs.flops)
