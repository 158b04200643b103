"""Random search: the baseline every other strategy must beat."""

from __future__ import annotations

from search_spaces import Arch

from ._base import Strategy, register_strategy


@register_strategy
class RandomSearch(Strategy):
    """Uniform samples, skipping architectures already proposed or known to be infeasible."""

    name = "random"
    description = "uniform random sampling of the space"

    def ask(self) -> Arch:
        return self.draw_acceptable(lambda: self.space.sample(self.rng))
