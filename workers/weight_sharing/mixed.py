"""Mixed-operation supernets of the `nb201` and `darts` spaces for the DARTS family.

Every edge of a cell holds all candidate operations; its output is the weighted sum of
theirs, with weights the search supplies at each forward pass (softmax of alpha for DARTS,
Gumbel-softmax samples for FBNet). The supernets take the weights as arguments instead of
owning them, so one network serves every method, and RARTS can run two networks on one
architecture.

Partial channels (PC-DARTS, Xu et al. 2020): with `k > 1` only the first 1/k of an edge's
input channels go through the candidate operations, the rest bypass them (max-pooled on a
stride-2 edge), the two parts are concatenated and the channels shuffled (groups of k).

BatchNorm: every BN of a candidate operation (and of a darts cell's input preprocessing) is
non-affine, as in the DARTS and PC-DARTS search networks, so that a learned BN scale cannot
rescale an operation's output against its architecture weight; the stem, NB201's residual
reductions and the head keep affine BN, and the discrete networks built for evaluation
(`space.build`) are affine throughout.

Edge normalisation (also PC-DARTS): optional per-edge weights (softmax of beta over the input
edges of a node) multiply each edge's output before the node sums them.

Weights are passed as `{cell: tensor[edges, ops]}` and edge weights as `{cell: tensor[edges]}`
with cells `("cell",)` for nb201 (one cell shared by every position, as NAS-Bench-201 does)
and `("normal", "reduce")` for darts. The operation implementations are the spaces' own
(`search_spaces.layers.nb201_net` / `darts_net`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import Arch, SearchSpace
from search_spaces import darts as darts_space
from search_spaces import nb201 as nb201_space
from search_spaces.layers import darts_net, nb201_net

Weights = dict[str, torch.Tensor]

#: The candidate operations of a darts-space mixed op: the space's operations plus `none`,
#: as in the DARTS search network (its weight competes in the softmax, but the derivation
#: never picks it, and the discrete space has no `none`).
DARTS_SEARCH_OPS: tuple[str, ...] = ("none", *darts_space.OPS)


@dataclass(frozen=True)
class Layout:
    """The architecture decisions of a space as seen by a mixed-op supernet."""

    space: str
    ops: tuple[str, ...]
    #: cell name -> edge count
    edges: dict[str, int]
    #: per cell: the edge indices entering each node (for edge normalisation and derivation)
    nodes: tuple[tuple[int, ...], ...]


def layout_of(space: SearchSpace) -> Layout:
    """The `Layout` of a supported space; ValueError for any other."""
    if space.name == "nb201":
        nodes = tuple(tuple(e for e, (_, dst) in enumerate(nb201_space.EDGES) if dst == t)
                      for t in (1, 2, 3))
        return Layout("nb201", nb201_space.OPS, {"cell": len(nb201_space.EDGES)}, nodes)
    if space.name == "darts":
        nodes, start = [], 0
        for i in range(darts_space.NODES):
            nodes.append(tuple(range(start, start + i + 2)))
            start += i + 2
        return Layout("darts", DARTS_SEARCH_OPS, {c: start for c in darts_space.CELLS},
                      tuple(nodes))
    raise ValueError(f"no mixed-op supernet for the space {space.name!r}")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MixedOp(nn.Module):
    """All candidate operations of one edge; `forward(x, w)` = sum_i w_i op_i(x).

    `none` is not evaluated: its output is zero, so its term and its term's gradient are zero
    (its weight still matters through the softmax that produced `w`)."""

    def __init__(self, ops: list[nn.Module], names: tuple[str, ...], k: int = 1,
                 stride: int = 1) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.live = [i for i, name in enumerate(names) if name != "none"]
        self.k = k
        self.bypass = nn.MaxPool2d(2, 2) if (k > 1 and stride > 1) else nn.Identity()

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return _weighted_sum(self.ops, self.live, x, weights)
        part = x.shape[1] // self.k
        mixed = _weighted_sum(self.ops, self.live, x[:, :part], weights)
        out = torch.cat([mixed, self.bypass(x[:, part:])], dim=1)
        return channel_shuffle(out, self.k)


def _weighted_sum(ops: nn.ModuleList, live: list[int], x: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    total = weights[live[0]] * ops[live[0]](x)
    for i in live[1:]:
        total = total + weights[i] * ops[i](x)
    return total


# ---- NAS-Bench-201 ---------------------------------------------------------------------
class NB201MixedCell(nn.Module):
    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        ops = nb201_space.OPS
        self.edges = nn.ModuleList(
            MixedOp([nb201_net.make_op(op, channels // k, affine=False) for op in ops], ops, k)
            for _ in nb201_space.EDGES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None) -> torch.Tensor:
        nodes = [x]
        for target in (1, 2, 3):
            total = None
            for e, (src, dst) in enumerate(nb201_space.EDGES):
                if dst != target:
                    continue
                out = self.edges[e](nodes[src], weights[e])
                if edge_weights is not None:
                    out = edge_weights[e] * out
                total = out if total is None else total + out
            nodes.append(total)
        return nodes[3]


class NB201Supernet(nn.Module):
    """The NAS-Bench-201 skeleton (stem, 3 stages, residual reductions, head) with mixed cells."""

    def __init__(self, channels: int, cells_per_stage: int, num_classes: int,
                 input_channels: int, k: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage > 0:
                layers.append(nb201_net.ResidualReduction(c, 2 * c))
                c *= 2
            layers.extend(NB201MixedCell(c, k) for _ in range(cells_per_stage))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor, weights: Weights,
                edge_weights: Weights | None = None) -> torch.Tensor:
        x = self.stem(x)
        w, ew = weights["cell"], (edge_weights or {}).get("cell")
        for layer in self.layers:
            x = layer(x, w, ew) if isinstance(layer, NB201MixedCell) else layer(x)
        x = self.head(x)
        return self.classifier(x.mean(dim=(2, 3)))


# ---- DARTS -----------------------------------------------------------------------------
def _darts_op(op: str, channels: int, stride: int) -> nn.Module:
    """The space's operation with non-affine BN; pools get a non-affine BN after them, as
    in the DARTS search network."""
    module = darts_net.make_op(op, channels, stride, affine=False)
    if op.endswith("pool_3x3"):
        return nn.Sequential(module, nn.BatchNorm2d(channels, affine=False))
    return module


class DartsMixedCell(nn.Module):
    def __init__(self, plan: darts_space.CellPlan, k: int) -> None:
        super().__init__()
        c = plan.c
        self.reduction = plan.reduction
        self.preprocess0 = (darts_net.FactorizedReduce(plan.c_prev_prev, c, affine=False)
                            if plan.reduction_prev else
                            darts_net.ReLUConvBN(plan.c_prev_prev, c, 1, affine=False))
        self.preprocess1 = darts_net.ReLUConvBN(plan.c_prev, c, 1, affine=False)
        ops = DARTS_SEARCH_OPS
        edges = []
        for i in range(darts_space.NODES):
            for state in range(i + 2):
                stride = darts_space.edge_stride(plan.reduction, state)
                edges.append(MixedOp([_darts_op(op, c // k, stride) for op in ops], ops, k,
                                     stride))
        self.edges = nn.ModuleList(edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for _ in range(darts_space.NODES):
            total = None
            for state in list(states):
                out = self.edges[e](state, weights[e])
                if edge_weights is not None:
                    out = edge_weights[e] * out
                total = out if total is None else total + out
                e += 1
            states.append(total)
        return torch.cat(states[2:], dim=1)


class DartsSupernet(nn.Module):
    """The DARTS search network: stem, `layers` mixed cells (reductions at 1/3 and 2/3)."""

    def __init__(self, channels: int, layers: int, num_classes: int, input_channels: int,
                 k: int = 1) -> None:
        super().__init__()
        c_stem = darts_space.STEM_MULTIPLIER * channels
        self.stem = nn.Sequential(
            nn.Conv2d(input_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        plan = darts_space.network_plan(channels, layers)
        self.cells = nn.ModuleList(DartsMixedCell(p, k) for p in plan)
        self.classifier = nn.Linear(darts_space.NODES * plan[-1].c, num_classes)

    def forward(self, x: torch.Tensor, weights: Weights,
                edge_weights: Weights | None = None) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            name = "reduce" if cell.reduction else "normal"
            ew = edge_weights[name] if edge_weights is not None else None
            s0, s1 = s1, cell(s0, s1, weights[name], ew)
        return self.classifier(s1.mean(dim=(2, 3)))


def build_supernet(space: SearchSpace, *, channels: int, cells: int, num_classes: int,
                   input_channels: int, k: int = 1) -> nn.Module:
    """The mixed-op supernet of `space`: `cells` is cells per stage (nb201) or the number
    of layers (darts)."""
    if space.name == "nb201":
        return NB201Supernet(channels, cells, num_classes, input_channels, k)
    if space.name == "darts":
        return DartsSupernet(channels, cells, num_classes, input_channels, k)
    raise ValueError(f"no mixed-op supernet for the space {space.name!r}")


# ---- architecture parameters -------------------------------------------------------------
class ArchParameters(nn.Module):
    """alpha (`[edges, ops]` per cell) and optionally beta (`[edges]` per cell, for edge
    normalisation), initialised to 1e-3 x N(0, 1) as in DARTS."""

    def __init__(self, layout: Layout, edge_norm: bool = False) -> None:
        super().__init__()
        self.layout = layout
        self.alpha = nn.ParameterDict({
            cell: nn.Parameter(1e-3 * torch.randn(n, len(layout.ops)))
            for cell, n in layout.edges.items()})
        self.beta = nn.ParameterDict({
            cell: nn.Parameter(1e-3 * torch.randn(n)) for cell, n in layout.edges.items()
        } if edge_norm else {})

    def op_weights(self) -> Weights:
        return {cell: torch.softmax(a, dim=-1) for cell, a in self.alpha.items()}

    def edge_weights(self) -> Weights | None:
        """Softmax of beta over the input edges of each node, or None without edge norm."""
        if not len(self.beta):
            return None
        out = {}
        for cell, b in self.beta.items():
            parts = [torch.softmax(b[list(edges)], dim=0) for edges in self.layout.nodes]
            out[cell] = torch.cat(parts)
        return out

    def numpy(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """(op probabilities, edge weights) as CPU arrays."""
        with torch.no_grad():
            probs = {c: w.detach().cpu().numpy() for c, w in self.op_weights().items()}
            edges = self.edge_weights()
            return probs, ({c: w.detach().cpu().numpy() for c, w in edges.items()}
                           if edges is not None else None)


# ---- derivation --------------------------------------------------------------------------
def derive(space: SearchSpace, probs: dict[str, np.ndarray],
           edge_weights: dict[str, np.ndarray] | None = None) -> Arch:
    """The discrete architecture of the weights: nb201, the argmax op of every edge (`none`
    included); darts, per node the two input edges whose strongest non-`none` op weight
    (times the edge weight) is largest, each with that op."""
    layout = layout_of(space)
    if layout.space == "nb201":
        arch: Arch = {"ops": [layout.ops[int(i)] for i in probs["cell"].argmax(axis=1)]}
    else:
        arch = {cell: _derive_darts_cell(probs[cell], layout,
                                         edge_weights[cell] if edge_weights else None)
                for cell in layout.edges}
    return space.validate(arch)


def _derive_darts_cell(probs: np.ndarray, layout: Layout,
                       edge_weights: np.ndarray | None) -> list[dict[str, Any]]:
    live = [i for i, op in enumerate(layout.ops) if op != "none"]
    real = probs[:, live]  # the supernet's `none` is never derived
    strength = real.max(axis=1) * (edge_weights if edge_weights is not None else 1.0)
    nodes = []
    for edges in layout.nodes:
        order = sorted(range(len(edges)), key=lambda j: (-strength[edges[j]], j))
        chosen = sorted(order[:2])
        ops = [layout.ops[live[int(real[edges[j]].argmax())]] for j in chosen]
        nodes.append({"inputs": chosen, "ops": ops})
    return nodes


_NB201_GRID: np.ndarray | None = None


def nb201_ranked(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every nb201 cell as op indices `[15625, 6]`, ordered by the sum of the log op
    probabilities (the alpha-product), best first, with those scores."""
    global _NB201_GRID
    if _NB201_GRID is None:
        n_ops, n_edges = len(nb201_space.OPS), len(nb201_space.EDGES)
        _NB201_GRID = np.array(list(itertools.product(range(n_ops), repeat=n_edges)))
    logp = np.log(np.clip(probs, 1e-30, None))
    scores = logp[np.arange(logp.shape[0]), _NB201_GRID].sum(axis=1)
    order = np.argsort(-scores, kind="stable")
    return _NB201_GRID[order], scores[order]


def skip_count(space: SearchSpace, arch: Arch) -> int:
    """Skip connections in the cell (nb201) or in the normal cell (darts); on mbconv the
    skipped layers (blocks below each stage's largest depth)."""
    if space.name == "mbconv":
        return sum(len(s["blocks"]) - s["depth"] for s in arch["stages"])
    ops = arch["ops"] if space.name == "nb201" else \
        [op for node in arch["normal"] for op in node["ops"]]
    return sum(op == "skip_connect" for op in ops)
