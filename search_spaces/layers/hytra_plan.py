"""One layer of BossNAS's HyTra network as its builder (`hytra_net`), the weight-sharing
supernet and the space's cost model see it, without torch, so that importing the space
(`search_spaces.hytra`) does not import torch."""

from __future__ import annotations

from typing import NamedTuple

EXPANSION = 4  # a layer's inner width is its output width // 4 (ResNet's bottleneck)


class LayerSpec(NamedTuple):
    """One layer as the builder, the supernet and the cost model see it."""

    op: str  # resconv | resatt
    c_in: int
    c_out: int
    down: bool  # the layer halves the resolution (goes down one scale)
    side_in: int
    side_out: int


def inner_width(c_out: int) -> int:
    return c_out // EXPANSION
