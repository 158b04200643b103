"""The DARTS CIFAR network's cell plan (channels and reductions of every cell), shared by
the space (`search_spaces.darts`), its network (`darts_net`) and the weight-sharing
supernet without torch, so that a network needs nothing from its space."""

from __future__ import annotations

from typing import NamedTuple

CELLS: tuple[str, ...] = ("normal", "reduce")
NODES = 4
STEM_MULTIPLIER = 3  # the stem has 3 x `channels` channels, as in DARTS


class CellPlan(NamedTuple):
    """Channels and role of one cell of the network (DARTS `NetworkCIFAR` bookkeeping)."""

    c_prev_prev: int  # channels of state 0 (output of the cell two back, or the stem)
    c_prev: int  # channels of state 1
    c: int  # channels of every node of this cell (its output has 4 * c)
    reduction: bool
    reduction_prev: bool  # state 0 has twice the spatial side of state 1


def network_plan(channels: int, layers: int) -> list[CellPlan]:
    """The cells of the DARTS CIFAR network: reduction cells at 1/3 and 2/3 of the depth
    double the channels; the stem feeds both inputs of the first cell."""
    c_stem = STEM_MULTIPLIER * channels
    c_pp, c_p, c = c_stem, c_stem, channels
    reduction_prev = False
    plan = []
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c *= 2
        plan.append(CellPlan(c_pp, c_p, c, reduction, reduction_prev))
        c_pp, c_p, reduction_prev = c_p, NODES * c, reduction
    return plan


def edge_stride(reduction: bool, state: int) -> int:
    """Edges from a cell input of a reduction cell halve the spatial side."""
    return 2 if reduction and state < 2 else 1
