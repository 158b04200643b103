"""Random search: the baseline every other strategy must beat."""

from __future__ import annotations

from search_spaces import Arch

from ._base import Strategy, register_strategy


@register_strategy
class RandomSearch(Strategy):
    name = "random"
    description = "uniform random sampling of the space"

    def ask(self) -> Arch:
        return self.space.sample(self.rng)
