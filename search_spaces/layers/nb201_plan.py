"""The NAS-Bench-201 cell's wiring, shared by the space (`search_spaces.nb201`) and its
network (`nb201_net`) without torch, so that the network needs nothing from the space."""

from __future__ import annotations

# (source node, target node) of each edge, in cell-string order.
EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
