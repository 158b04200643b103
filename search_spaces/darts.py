"""DARTS cell space (Liu et al., ICLR 2019; the NASNet-style cell of Zoph et al.).

Two cells are searched, a normal cell and a reduction cell. Each has 4 intermediate nodes;
node i (0..3) sums two edges, each an operation applied to one of the i + 2 earlier states
(state 0 and 1 are the cell inputs, the outputs of the cells two and one back; state j + 2 is
node j). The cell output concatenates the 4 nodes (the DARTS `concat = range(2, 6)`).

An architecture is a JSON dict::

    {"normal": [{"inputs": [0, 1], "ops": ["sep_conv_3x3", "skip_connect"]},   # node 0
                {"inputs": [0, 2], "ops": ["sep_conv_3x3", "dil_conv_3x3"]},   # node 1
                ...                                                           # nodes 2, 3
               ],
     "reduce": [... four nodes ...]}

`inputs` are two distinct states in increasing order and `ops[k]` is applied to
`inputs[k]`. In the flat DNA each node is three independent single choices: the unordered
input pair (one of C(i + 2, 2) = 1, 3, 6, 10 pairs, in `itertools.combinations` order), the
op of the lower input and the op of the higher one; the normal cell comes first.

The canonical key writes the DARTS genotype structurally, nodes separated by '|', the two
edges of a node by ',', an edge as `op~input`::

    normal:sep_conv_3x3~0,skip_connect~1|...|...|...;reduce:max_pool_3x3~0,...|...|...|...

Operations follow the DARTS paper's evaluation network: `sep_conv_kxk` is ReLU - depthwise
conv - pointwise conv - BN applied twice (the first depthwise conv carries the stride),
`dil_conv_kxk` is ReLU - depthwise conv with dilation 2 - pointwise conv - BN once,
`skip_connect` is the identity, or FactorizedReduce on a cell input of a reduction cell,
and the pools have *no* BatchNorm after them (the DARTS search network adds a non-affine BN
there; the evaluation network does not). `none` (the zero operation) is not an operation of
this space: the DARTS search network has it in its mixed ops, but its derivation never picks
it, so DARTS genotypes never contain it (a node with `none` on both edges would be all
zeros). The weight-sharing supernet keeps it (`workers.weight_sharing.mixed`).
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

from ._base import Arch, SearchSpace, register_space
from .layers.darts_plan import (
    CELLS,
    NODES,
    STEM_MULTIPLIER,
    CellPlan,  # noqa: F401 (re-exported: the weight-sharing supernet uses it)
    edge_stride,
    network_plan,
)
from .validation import ArgumentError

OPS: tuple[str, ...] = (
    "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
    "dil_conv_3x3", "dil_conv_5x5", "max_pool_3x3", "avg_pool_3x3",
)
# PAIRS[i]: the candidate input pairs of node i (states 0 .. i + 1), lower input first.
PAIRS: tuple[tuple[tuple[int, int], ...], ...] = tuple(
    tuple(itertools.combinations(range(i + 2), 2)) for i in range(NODES)
)
_OP_INDEX = {op: i for i, op in enumerate(OPS)}
_PAIR_INDEX = [{pair: k for k, pair in enumerate(pairs)} for pairs in PAIRS]
_SEP_KERNEL = {"sep_conv_3x3": 3, "sep_conv_5x5": 5}
_DIL_KERNEL = {"dil_conv_3x3": 3, "dil_conv_5x5": 5}


class Genotype(NamedTuple):
    """The DARTS-paper genotype: per cell, 8 `(op, input state)` pairs (two per node, in
    node order) and the states that are concatenated into the cell output."""

    normal: list[tuple[str, int]]
    normal_concat: range
    reduce: list[tuple[str, int]]
    reduce_concat: range


# ---- validation ----------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _node_dna(cell: str, i: int, node: Any) -> list[int]:
    where = f"node {i} of the {cell} cell"
    if not isinstance(node, dict) or set(node) != {"inputs", "ops"}:
        raise ValueError(f"{where} must be a dict with exactly the keys 'inputs' and 'ops', "
                         f"got {node!r}")
    inputs, ops = node["inputs"], node["ops"]
    if not (isinstance(inputs, list) and len(inputs) == 2 and all(map(_is_int, inputs))):
        raise ValueError(f"{where}: 'inputs' must be a list of two integers, got {inputs!r}")
    pair = _PAIR_INDEX[i].get((inputs[0], inputs[1]))
    if pair is None:
        raise ValueError(f"{where}: 'inputs' must be two distinct states among 0..{i + 1} in "
                         f"increasing order, got {inputs!r}")
    if not (isinstance(ops, list) and len(ops) == 2):
        raise ValueError(f"{where}: 'ops' must be a list of two operation names, got {ops!r}")
    for op in ops:
        if not isinstance(op, str) or op not in _OP_INDEX:
            raise ValueError(f"{where}: unknown operation {op!r}; known: {', '.join(OPS)}")
    return [pair, _OP_INDEX[ops[0]], _OP_INDEX[ops[1]]]


def arch_to_dna(arch: Any) -> list[int]:
    """The DNA of an architecture, validating it with precise errors."""
    if not isinstance(arch, dict) or set(arch) != set(CELLS):
        raise ValueError("a darts architecture is a dict with exactly the keys 'normal' and "
                         f"'reduce', got {arch!r}")
    dna: list[int] = []
    for cell in CELLS:
        nodes = arch[cell]
        if not isinstance(nodes, list) or len(nodes) != NODES:
            raise ValueError(f"the {cell} cell must be a list of {NODES} nodes, got {nodes!r}")
        for i, node in enumerate(nodes):
            dna += _node_dna(cell, i, node)
    return dna


def choice_counts() -> list[int]:
    per_cell = [n for pairs in PAIRS for n in (len(pairs), len(OPS), len(OPS))]
    return per_cell * len(CELLS)


def dna_to_arch(dna: list[int]) -> Arch:
    counts = choice_counts()
    if len(dna) != len(counts) or not all(
            _is_int(v) and 0 <= v < c for v, c in zip(dna, counts, strict=True)):
        raise ValueError(f"a darts DNA is {len(counts)} integers within {counts}, got {dna!r}")
    arch: Arch = {}
    values = iter(dna)
    for cell in CELLS:
        nodes = []
        for i in range(NODES):
            pair, op_a, op_b = next(values), next(values), next(values)
            nodes.append({"inputs": list(PAIRS[i][pair]), "ops": [OPS[op_a], OPS[op_b]]})
        arch[cell] = nodes
    return arch


# ---- key and genotype ------------------------------------------------------------------
def arch_key(arch: Arch) -> str:
    """`normal:op~a,op~b|...;reduce:...` (see the module docstring)."""
    cells = []
    for cell in CELLS:
        body = "|".join(
            ",".join(f"{op}~{state}" for op, state in zip(node["ops"], node["inputs"],
                                                          strict=True))
            for node in arch[cell]
        )
        cells.append(f"{cell}:{body}")
    return ";".join(cells)


def _parse_edge(key: str, where: str, text: str) -> tuple[str, int]:
    op, sep, state = text.partition("~")
    if sep != "~" or not state.isdigit() or str(int(state)) != state:
        raise ValueError(f"edge {text!r} of {where} in {key!r} must read 'op~state'")
    if op not in _OP_INDEX:
        raise ValueError(f"unknown operation {op!r} in {key!r}; known: {', '.join(OPS)}")
    return op, int(state)


def parse_key(key: str) -> Arch:
    """Inverse of `arch_key`, by splitting on the separators, with precise errors."""
    if not isinstance(key, str):
        raise ValueError(f"a darts key must be a string, got {key!r}")
    cells = key.split(";")
    if len(cells) != len(CELLS):
        raise ValueError(f"a darts key has {len(CELLS)} cells separated by ';': {key!r}")
    arch: Arch = {}
    for cell, text in zip(CELLS, cells, strict=True):
        name, sep, body = text.partition(":")
        if sep != ":" or name != cell:
            raise ValueError(f"cell {text!r} of {key!r} must start with '{cell}:'")
        nodes_text = body.split("|")
        if len(nodes_text) != NODES:
            raise ValueError(f"the {cell} cell of {key!r} needs {NODES} nodes separated by "
                             f"'|', got {len(nodes_text)}")
        nodes = []
        for i, node_text in enumerate(nodes_text):
            where = f"node {i} of the {cell} cell"
            edges = node_text.split(",")
            if len(edges) != 2:
                raise ValueError(f"{where} in {key!r} needs 2 edges separated by ',', "
                                 f"got {len(edges)}")
            (op_a, a), (op_b, b) = (_parse_edge(key, where, e) for e in edges)
            nodes.append({"inputs": [a, b], "ops": [op_a, op_b]})
        arch[cell] = nodes
    arch_to_dna(arch)  # validates the input states
    return arch


def arch_genotype(arch: Arch) -> Genotype:
    arch_to_dna(arch)
    edges = {cell: [(op, state) for node in arch[cell]
                    for op, state in zip(node["ops"], node["inputs"], strict=True)]
             for cell in CELLS}
    concat = range(2, 2 + NODES)
    return Genotype(edges["normal"], concat, edges["reduce"], concat)


def genotype_arch(genotype: Any) -> Arch:
    """The architecture of a DARTS genotype (any object with `normal`, `reduce` and
    optionally `*_concat` attributes); each node's two edges are put lower input first."""
    arch: Arch = {}
    for cell in CELLS:
        edges = getattr(genotype, cell, None)
        if not isinstance(edges, list | tuple) or len(edges) != 2 * NODES:
            raise ValueError(f"genotype.{cell} must be {2 * NODES} (op, input) pairs, "
                             f"got {edges!r}")
        concat = getattr(genotype, f"{cell}_concat", None)
        if concat is not None and list(concat) != list(range(2, 2 + NODES)):
            raise ValueError(f"genotype.{cell}_concat must be range(2, {2 + NODES}) (every "
                             f"node is concatenated), got {concat!r}")
        nodes = []
        for i in range(NODES):
            pair = edges[2 * i:2 * i + 2]
            if not all(isinstance(e, list | tuple) and len(e) == 2 for e in pair):
                raise ValueError(f"genotype.{cell} node {i}: edges must be (op, input) pairs, "
                                 f"got {pair!r}")
            if all(_is_int(state) for _, state in pair):
                pair = sorted(pair, key=lambda edge: edge[1])  # lower input first
            (op_a, a), (op_b, b) = pair
            nodes.append({"inputs": [a, b], "ops": [op_a, op_b]})
        arch[cell] = nodes
    arch_to_dna(arch)
    return arch


# ---- analytic cost model ---------------------------------------------------------------
def _factorized_reduce(c_in: int, c_out: int) -> tuple[int, int]:
    """(params, MACs per output pixel): two 1x1 stride-2 convs of c_out // 2 each, BN."""
    return 2 * c_in * (c_out // 2) + 2 * c_out, 2 * c_in * (c_out // 2)


def _op_cost(op: str, c: int, stride: int) -> tuple[int, int]:
    """(params, MACs per output pixel) of one edge operation on c channels."""
    if op in _SEP_KERNEL:
        k = _SEP_KERNEL[op]
        return 2 * (c * k * k + c * c + 2 * c), 2 * (c * k * k + c * c)
    if op in _DIL_KERNEL:
        k = _DIL_KERNEL[op]
        return c * k * k + c * c + 2 * c, c * k * k + c * c
    if op == "skip_connect" and stride == 2:
        return _factorized_reduce(c, c)
    return 0, 0  # identity, pools


@register_space
class DartsSpace(SearchSpace):
    """The DARTS normal + reduction cell space on the DARTS CIFAR network skeleton."""

    name = "darts"
    description = ("DARTS cells: normal + reduction cell, 4 nodes x 2 edges x 7 ops each, "
                   "on the DARTS CIFAR network (no auxiliary head, no drop-path)")

    def __init__(
        self,
        channels: int = 8,
        layers: int = 5,
        num_classes: int = 10,
        input_channels: int = 3,
        input_size: int = 32,
    ) -> None:
        for field, value in (("channels", channels), ("layers", layers),
                             ("num_classes", num_classes), ("input_channels", input_channels),
                             ("input_size", input_size)):
            if not _is_int(value) or value < 1:
                raise ArgumentError(f"{field}", f"must be a positive integer, got {value!r}")
        if layers < 3:
            raise ArgumentError("layers", "must be at least 3 (a normal cell and two "
                                          f"reduction cells), got {layers}")
        if input_size % 4:
            raise ArgumentError("input_size", "must be a multiple of 4 (two reduction "
                                              f"cells halve it), got {input_size}")
        self.channels = channels
        self.layers = layers
        self.num_classes = num_classes
        self.input_channels = input_channels
        self.input_size = input_size

    # ---- decisions -------------------------------------------------------------------
    def template(self) -> Any:
        import pyglove as pg

        def cell() -> Any:
            return pg.List([
                pg.Dict(inputs=pg.oneof([list(p) for p in PAIRS[i]]),
                        ops=pg.List([pg.oneof(list(OPS)), pg.oneof(list(OPS))]))
                for i in range(NODES)
            ])

        return pg.Dict(**{name: cell() for name in CELLS})

    def choice_counts(self) -> list[int]:
        return choice_counts()

    def to_dna(self, arch: Arch) -> list[int]:
        return arch_to_dna(arch)

    def from_dna(self, dna: list[int]) -> Arch:
        return dna_to_arch(dna)

    def key(self, arch: Arch) -> str:
        arch_to_dna(arch)
        return arch_key(arch)

    def from_key(self, key: str) -> Arch:
        return parse_key(key)

    def genotype(self, arch: Arch) -> Genotype:
        """The DARTS-paper genotype, e.g. `normal=[('sep_conv_3x3', 0), ...]`,
        `normal_concat=range(2, 6)`."""
        return arch_genotype(arch)

    def from_genotype(self, genotype: Any) -> Arch:
        """Inverse of `genotype` (also takes the original DARTS `Genotype` namedtuples)."""
        return genotype_arch(genotype)

    def input_shape(self, arch: Arch | None = None) -> tuple[int, ...]:
        """The same for every architecture (the input resolution is not searched)."""
        return (self.input_channels, self.input_size, self.input_size)

    def build(self, arch: Arch, **kwargs: Any) -> Any:
        """The network; `channels`, `layers` and `num_classes` may be overridden (e.g. to
        train a wider final model), which `params`/`flops` then do not describe."""
        from .layers.darts_net import DartsNetwork

        arch_to_dna(arch)
        return DartsNetwork(
            arch,
            channels=kwargs.get("channels", self.channels),
            layers=kwargs.get("layers", self.layers),
            num_classes=kwargs.get("num_classes", self.num_classes),
            input_channels=self.input_channels,
        )

    # ---- analytic cost model (exact for the network `build` returns) ---------------------
    def _costs(self, arch: Arch) -> tuple[int, int]:
        """(params, MACs) of the whole network for one input."""
        arch_to_dna(arch)
        c_stem, side = STEM_MULTIPLIER * self.channels, self.input_size
        params = self.input_channels * c_stem * 9 + 2 * c_stem
        macs = self.input_channels * c_stem * 9 * side * side
        plan = network_plan(self.channels, self.layers)
        for cell in plan:
            # `side` is the spatial side of state 1; state 0 is twice as large after a reduction
            c = cell.c
            if cell.reduction_prev:
                p0, m0 = _factorized_reduce(cell.c_prev_prev, c)
            else:
                p0, m0 = cell.c_prev_prev * c + 2 * c, cell.c_prev_prev * c
            params += p0 + cell.c_prev * c + 2 * c
            macs += (m0 + cell.c_prev * c) * side * side
            out_side = side // 2 if cell.reduction else side
            for node in arch["reduce" if cell.reduction else "normal"]:
                for op, state in zip(node["ops"], node["inputs"], strict=True):
                    p, m = _op_cost(op, c, edge_stride(cell.reduction, state))
                    params += p
                    macs += m * out_side * out_side
            side = out_side
        c_last = plan[-1].c * NODES
        params += c_last * self.num_classes + self.num_classes
        macs += c_last * self.num_classes
        return params, macs

    def params(self, arch: Arch) -> int:
        return self._costs(arch)[0]

    def flops(self, arch: Arch) -> int:
        """2 x MACs of convolutions and the classifier (the `torch.utils.flop_counter` rule)."""
        return 2 * self._costs(arch)[1]
