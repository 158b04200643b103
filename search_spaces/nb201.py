"""NAS-Bench-201 cell space (Dong & Yang, ICLR 2020): 6 edges x 5 operations = 15,625 cells.

An architecture is `{"ops": [op(0->1), op(0->2), op(1->2), op(0->3), op(1->3), op(2->3)]}`:
the edges in the order of the NAS-Bench-201 cell string, which is the canonical key.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ._base import Arch, SearchSpace, register_space
from .layers.nb201_plan import EDGES
from .validation import ArgumentError

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
_OP_INDEX = {op: i for i, op in enumerate(OPS)}
_CONV_KERNEL = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}


def cell_string(ops: list[str]) -> str:
    """`|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` from six ops in edge order."""
    nodes = []
    for target in (1, 2, 3):
        parts = [f"{ops[e]}~{src}" for e, (src, dst) in enumerate(EDGES) if dst == target]
        nodes.append("|" + "|".join(parts) + "|")
    return "+".join(nodes)


def parse_cell_string(key: str) -> list[str]:
    """Inverse of `cell_string`, by structure (split on separators), with precise errors."""
    nodes = key.split("+")
    if len(nodes) != 3:
        raise ValueError(f"NAS-Bench-201 cell string needs 3 nodes separated by '+': {key!r}")
    ops: dict[tuple[int, int], str] = {}
    for target, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")):
            raise ValueError(f"node {target} of {key!r} must be wrapped in '|'")
        parts = node[1:-1].split("|")
        if len(parts) != target:
            raise ValueError(f"node {target} of {key!r} needs {target} inputs, got {len(parts)}")
        for src, part in enumerate(parts):
            op, sep, idx = part.partition("~")
            if sep != "~" or idx != str(src):
                raise ValueError(f"edge {part!r} of {key!r} must read 'op~{src}'")
            if op not in _OP_INDEX:
                raise ValueError(f"unknown operation {op!r} in {key!r}; known: {', '.join(OPS)}")
            ops[(src, target)] = op
    return [ops[e] for e in EDGES]


def effective_ops(ops: list[str]) -> list[str]:
    """The cell's operations with every edge that cannot affect the output set to `none`:
    an edge counts when it is not `none`, its source is reachable from the cell input and
    its target reaches the cell output through non-`none` edges. A cell whose output is
    cut off from its input computes zeros, and compilers drop the whole network around it
    (HW-NAS-Bench measures such networks at a few microseconds)."""
    live = [op != "none" for op in ops]
    reached = {0}
    for target in (1, 2, 3):
        if any(live[e] and src in reached for e, (src, dst) in enumerate(EDGES)
               if dst == target):
            reached.add(target)
    useful = {3}
    for source in (2, 1, 0):
        if any(live[e] and dst in useful for e, (src, dst) in enumerate(EDGES)
               if src == source):
            useful.add(source)
    if 3 not in reached:
        return ["none"] * len(ops)
    return [op if live[e] and src in reached and dst in useful else "none"
            for e, ((src, dst), op) in enumerate(zip(EDGES, ops, strict=True))]


#: Operations with weights: two of them on the same input are two different functions (their
#: own weights), while two parameter-free ones on the same input are one tensor.
_WEIGHTED_OPS = frozenset(_CONV_KERNEL)


def function_key(ops: list[str]) -> str:
    """A canonical form of what the cell computes, equal for two cells exactly when they
    compute the same function of the input up to which weights sit where (isomorphic
    computation graphs): dead edges (`effective_ops`) are dropped, `skip_connect` is the
    identity, sums are unordered, and two `avg_pool_3x3` of the same tensor are one tensor.

    The graph's vertices are the live operations; each reads the sum at its source node, a
    multiset of vertices (and the input `x`; a skip forwards its source's multiset, so
    `x + x` is `x` twice). Each vertex gets a tree code (operation + its input's codes); as
    the code is invariant under isomorphism, the vertices are ordered by it and only
    vertices of equal code (e.g. two 3x3 convolutions of `x`) are permuted, keeping the
    smallest encoding: an exact canonical form. Two convolutions of `x` summed (two weight
    tensors) and one convolution of `x` reached twice through skips (`2 * conv(x)`) differ.
    """
    ops = effective_ops(list(ops))
    sums: list[dict[int, int]] = [{-1: 1}]  # node -> {vertex (-1: the input): multiplicity}
    vertices: list[tuple[str, tuple[tuple[int, int], ...]]] = []  # (op, sorted input)
    pooled: dict[tuple[str, tuple[tuple[int, int], ...]], int] = {}
    for target in (1, 2, 3):
        total: dict[int, int] = {}
        for e, (src, dst) in enumerate(EDGES):
            op = ops[e]
            if dst != target or op == "none":
                continue
            if op == "skip_connect":
                refs = sums[src]
            else:
                vertex = (op, tuple(sorted(sums[src].items())))
                if op in _WEIGHTED_OPS or vertex not in pooled:
                    vertices.append(vertex)
                    pooled.setdefault(vertex, len(vertices) - 1)
                refs = {len(vertices) - 1 if op in _WEIGHTED_OPS else pooled[vertex]: 1}
            for ref, count in refs.items():
                total[ref] = total.get(ref, 0) + count
        sums.append(total)
    return _canonical(vertices, sums[3])


@cache
def _function_key(ops: tuple[str, ...]) -> str:
    return function_key(list(ops))


def _canonical(vertices: list[tuple[str, tuple[tuple[int, int], ...]]],
               output: dict[int, int]) -> str:
    """The smallest encoding of the vertex DAG over the orderings that sort the vertices by
    tree code (see `function_key`)."""
    from itertools import permutations, product

    codes: list[str] = []
    for op, inputs in vertices:  # inputs precede their readers
        parts = sorted(f"{n}*{'x' if ref < 0 else codes[ref]}" for ref, n in inputs)
        codes.append(f"{op}({'+'.join(parts)})")
    groups: dict[str, list[int]] = {}
    for v in sorted(range(len(vertices)), key=lambda v: codes[v]):
        groups.setdefault(codes[v], []).append(v)
    best = None
    for choice in product(*(permutations(members) for members in groups.values())):
        order = [v for members in choice for v in members]
        place = {v: i for i, v in enumerate(order)} | {-1: -1}
        rows = [(vertices[v][0], sorted((place[r], n) for r, n in vertices[v][1]))
                for v in order]
        encoding = repr((rows, sorted((place[r], n) for r, n in output.items())))
        if best is None or encoding < best:
            best = encoding
    return best if best is not None else "zero"


@register_space
class NB201Space(SearchSpace):
    """The NAS-Bench-201 topology space with its macro skeleton (CIFAR-shaped input)."""

    name = "nb201"
    description = "NAS-Bench-201 cell: 6 edges x 5 ops (15,625 cells), ResNet-like skeleton"

    def __init__(
        self,
        channels: int = 16,
        cells_per_stage: int = 5,
        num_classes: int = 10,
        input_size: int = 32,
        input_channels: int = 3,
    ) -> None:
        for field, value in (("channels", channels), ("cells_per_stage", cells_per_stage),
                             ("num_classes", num_classes), ("input_size", input_size),
                             ("input_channels", input_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ArgumentError(f"{field}", f"must be a positive integer, got {value!r}")
        if input_size % 4:
            raise ArgumentError("input_size", f"must be a multiple of 4, got {input_size}")
        self.channels = channels
        self.cells_per_stage = cells_per_stage
        self.num_classes = num_classes
        self.input_size = input_size
        self.input_channels = input_channels

    def template(self) -> Any:
        import pyglove as pg

        return pg.Dict(ops=pg.List([pg.oneof(list(OPS)) for _ in EDGES]))

    def choice_counts(self) -> list[int]:
        return [len(OPS)] * len(EDGES)

    def to_dna(self, arch: Arch) -> list[int]:
        ops = arch.get("ops") if isinstance(arch, dict) else None
        if not isinstance(ops, list) or len(ops) != len(EDGES):
            raise ValueError("an nb201 architecture is {'ops': [six operation names]}")
        try:
            return [_OP_INDEX[op] for op in ops]
        except (KeyError, TypeError):
            raise ValueError(f"unknown operation in {ops!r}; known: {', '.join(OPS)}") from None

    def from_dna(self, dna: list[int]) -> Arch:
        return {"ops": [OPS[i] for i in dna]}

    def key(self, arch: Arch) -> str:
        return cell_string(arch["ops"])

    def from_key(self, key: str) -> Arch:
        return {"ops": parse_cell_string(key)}

    def latency_encoding(self, arch: Arch) -> Any:
        """One-hot of the cell, of its effective cell (`effective_ops`) and a dead-cell flag.
        Both encodings: on HW-NAS-Bench a dead edge still costs on some devices (a dead 1x1
        conv adds 26% on the Pixel 3 and 2% on the edge GPU in one measured pair)."""
        import numpy as np

        ops = effective_ops(arch["ops"])
        dead = float(all(op == "none" for op in ops))
        return np.concatenate([self.encode(arch), self.encode({"ops": ops}), [dead]]
                              ).astype(np.float32)

    def input_shape(self, arch: Arch | None = None) -> tuple[int, ...]:
        return (self.input_channels, self.input_size, self.input_size)

    def function_key(self, arch: Arch) -> str:
        """What the cell computes, up to which weights sit where (`function_key` above):
        equal keys, isomorphic networks. The `proxy` strategy scores one cell per key."""
        self.to_dna(arch)  # validates
        return _function_key(tuple(arch["ops"]))

    def build(self, arch: Arch, **kwargs: Any) -> Any:
        from .layers.nb201_net import NB201Network

        self.to_dna(arch)  # validates
        return NB201Network(
            arch["ops"],
            channels=kwargs.get("channels", self.channels),
            cells_per_stage=kwargs.get("cells_per_stage", self.cells_per_stage),
            num_classes=kwargs.get("num_classes", self.num_classes),
            input_channels=self.input_channels,
        )

    # ---- analytic cost model (exact for the network `build` returns) ---------------------
    def _stages(self) -> list[tuple[int, int]]:
        """(channels, spatial side) of each of the three stages."""
        c, s = self.channels, self.input_size
        return [(c, s), (2 * c, s // 2), (4 * c, s // 4)]

    def params(self, arch: Arch) -> int:
        self.to_dna(arch)
        c0 = self.channels
        total = self.input_channels * c0 * 9 + 2 * c0  # stem conv + BN
        stages = self._stages()
        for i, (c, _) in enumerate(stages):
            cell = sum(c * c * _CONV_KERNEL[op] ** 2 + 2 * c for op in arch["ops"]
                       if op in _CONV_KERNEL)
            total += self.cells_per_stage * cell
            if i < 2:  # residual reduction block c -> 2c
                c2 = 2 * c
                total += c * c2 * 9 + 2 * c2 + c2 * c2 * 9 + 2 * c2 + c * c2
        c_last = stages[-1][0]
        total += 2 * c_last + c_last * self.num_classes + self.num_classes
        return total

    def flops(self, arch: Arch) -> int:
        """2 x MACs of convolutions and the classifier (the `torch.utils.flop_counter` rule)."""
        self.to_dna(arch)
        c0, s0 = self.channels, self.input_size
        macs = self.input_channels * c0 * 9 * s0 * s0
        stages = self._stages()
        for i, (c, s) in enumerate(stages):
            cell = sum(c * c * _CONV_KERNEL[op] ** 2 * s * s for op in arch["ops"]
                       if op in _CONV_KERNEL)
            macs += self.cells_per_stage * cell
            if i < 2:
                c2, s2 = 2 * c, s // 2
                macs += c * c2 * 9 * s2 * s2 + c2 * c2 * 9 * s2 * s2 + c * c2 * s2 * s2
        macs += stages[-1][0] * self.num_classes
        return 2 * macs
