"""One block of the hybrid CNN-transformer network as its builder (`hybrid_net`), the
weight-sharing supernet and the space's cost model see it, without torch, so that the
network needs nothing from its space (`search_spaces.hybrid`)."""

from __future__ import annotations

from typing import NamedTuple

BOTTLENECK_REDUCTION = 4  # a bottleneck's inner width is width // 4


class BlockSpec(NamedTuple):
    """One block of the network as the builder and the cost model see it."""

    kind: str
    c_in: int
    c_out: int
    stride: int
    side_in: int  # spatial side of the block's input
    side_out: int  # spatial side of its output
