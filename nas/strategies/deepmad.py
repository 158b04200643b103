"""DeepMAD (Shen et al., ICML 2023): design a CNN with no training, by mathematical
programming over its structure, with MAE-NAS's entropy (Sun et al., ICML 2022) as objective.

The network is seen as a chain of conv layers cut into stages at each stride-2 block. A conv
layer with c input channels, a k x k kernel and g groups multiplies the standard deviation of
a Gaussian signal by sqrt(c k^2 / g) (weights from N(0, 1), BatchNorm removed, MAE-NAS's
setting), so a block adds `0.5 log(prod c k^2 / g)` to the log-std: its entropy term. The
program (the paper's eq. 9, as in alibaba/lightweight-neural-architecture-search):

    maximise   sum_s alpha_s log(c_s r_s^2) * sum_{blocks b up to the end of stage s} gain_b
               - beta * exp(std(stage depths))
    subject to rho(prefix) = L / exp(mean_l log w_l) <= rho_0 for every stage prefix
               (L layers, w_l = c k^2 / g: the effectiveness, depth over average width),
               FLOPs <= budget, params <= budget, the job's constraints (latency on a device:
               measured, imported or predicted, through `SearchContext.value_of`),

with c_s, r_s the channels and side at the end of stage s, alpha = 1 for every stage but the
last (`last_stage_weight`, 8 as in the paper), beta the depth penalty (10). Like the
reference, the integer program is solved by an evolutionary search over the structure
variables (a population of the best feasible designs, mutation of a random member, the
worst replaced; `iterations` designs scored analytically, microseconds each).

Spaces: `mbconv` (per-stage depth, per-block kernel and expansion width, the global width
multiplier and the input resolution; the stage output widths are the space's
`stage_channels` times the multiplier, so per-stage width is searched through the blocks'
hidden widths and the multiplier) and `nb201` (cells: the entropy gain of a cell propagates
variances through its DAG, inputs of a node assumed independent; the effectiveness uses the
longest conv path). The strategy proposes the best design first, then the next best
feasible designs of the solver, then mutations of the best; trials train as any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_spaces import Arch, SearchSpace
from search_spaces.validation import (
    UnsupportedSpaceError,
    int_at_least,
    non_negative,
    positive_number,
)

from ._base import Strategy, TrialView, register_strategy

#: log-std floor of a block that passes nothing (a cell whose output node has no input).
DEAD_GAIN = -50.0
#: How many of the solver's best feasible designs the state keeps (the proposals to come).
KEEP = 400


@dataclass(frozen=True)
class Stage:
    """One stage of the chain: its end's channels and side, its blocks' log-std gains and the
    widths c k^2 / g of its layers on the main path (for the effectiveness)."""

    channels: int
    side: int
    gains: tuple[float, ...]
    widths: tuple[float, ...]


@dataclass(frozen=True)
class Structure:
    """What DeepMAD's program reads of a network: its stages and the searched depths."""

    stages: tuple[Stage, ...]
    depths: tuple[int, ...]


def stage_weights(n: int, last: float) -> list[float]:
    """alpha: 1 for every stage, `last` for the last one (the paper's (1, 1, 1, 1, 8))."""
    return [1.0] * (n - 1) + [float(last)] if n else []


def entropy(structure: Structure, last_stage_weight: float = 8.0) -> float:
    """DeepMAD's multi-scale entropy: sum_s alpha_s log(c_s r_s^2) times the cumulative
    log-std gain of every block up to the end of stage s."""
    total, cumulative = 0.0, 0.0
    weights = stage_weights(len(structure.stages), last_stage_weight)
    for stage, alpha in zip(structure.stages, weights, strict=True):
        cumulative += sum(stage.gains)
        total += alpha * math.log(stage.channels * stage.side ** 2) * cumulative
    return total


def effectiveness(structure: Structure) -> float:
    """rho: the largest, over the stage prefixes of the network, of depth L (conv layers)
    over the geometric mean of the layers' widths c k^2 / g."""
    worst, layers, log_width = 0.0, 0, 0.0
    for stage in structure.stages:
        layers += len(stage.widths)
        log_width += sum(math.log(w) for w in stage.widths)
        if layers:
            worst = max(worst, layers / math.exp(log_width / layers))
    return worst


def depth_penalty(structure: Structure, beta: float) -> float:
    """beta * exp(std of the stage depths): the paper's penalty on uneven depths."""
    if beta == 0 or len(structure.depths) < 2:
        return 0.0
    return beta * math.exp(float(np.std(structure.depths)))


# ---- structures of the supported spaces ------------------------------------------------------
def _conv_gain(c_in: int, kernel: int, groups: int = 1) -> float:
    return 0.5 * math.log(c_in * kernel ** 2 / groups)


def mbconv_structure(space: Any, arch: Arch) -> Structure:
    """The `mbconv` network (`net_spec`): the stem 3x3 conv and the depthwise-separable
    block open stage 0; an MBConv block (1x1 expand, k x k depthwise, 1x1 project) has gain
    0.5 log(c_in k^2 mid) and widths c_in, k^2, mid; a stride-2 block starts a stage; the
    1x1 head conv ends the last stage (its channels are the last stage's)."""
    spec = space.net_spec(arch)
    stem, c_in0 = spec.stem, spec.input_channels
    gains = [_conv_gain(c_in0, 3), _conv_gain(stem, 3, stem) + _conv_gain(stem, 1)]
    widths = [c_in0 * 9.0, 9.0, float(stem)]
    channels, side = spec.first, spec.resolution
    stages: list[Stage] = []
    for block in spec.blocks:
        if block.stride == 2:
            stages.append(Stage(channels, side, tuple(gains), tuple(widths)))
            gains, widths = [], []
        gains.append(0.5 * math.log(block.c_in * block.kernel ** 2 * block.mid))
        widths += [float(block.c_in), float(block.kernel ** 2), float(block.mid)]
        channels, side = block.c_out, block.side_out
    gains.append(_conv_gain(channels, 1))
    widths.append(float(channels))
    stages.append(Stage(spec.head, side, tuple(gains), tuple(widths)))
    depths: dict[int, int] = {}
    for block in spec.blocks:
        depths[block.stage] = depths.get(block.stage, 0) + 1
    return Structure(tuple(stages), tuple(depths[s] for s in sorted(depths)))


#: Variance gain of an NB201 operation (ReLU-conv-BN without the BN: ReLU halves the second
#: moment, the conv multiplies it by c k^2; a 3x3 average of independent values divides by 9).
def _nb201_op_gain(op: str, channels: int) -> float:
    kernel = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}.get(op)
    if kernel is not None:
        return channels * kernel ** 2 / 2.0
    return {"none": 0.0, "skip_connect": 1.0, "avg_pool_3x3": 1.0 / 9.0}[op]


def nb201_cell(ops: list[str], channels: int) -> tuple[float, tuple[float, ...]]:
    """A cell's log-std gain (variances summed over a node's inputs) and the widths of the
    layers on its longest conv path."""
    from search_spaces.layers.nb201_plan import EDGES

    var = [1.0, 0.0, 0.0, 0.0]
    path: list[tuple[float, ...] | None] = [(), None, None, None]
    for (src, dst), op in sorted(zip(EDGES, ops, strict=True), key=lambda e: e[0][1]):
        var[dst] += _nb201_op_gain(op, channels) * var[src]
        if op == "none" or path[src] is None:
            continue
        kernel = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}.get(op)
        step = path[src] + ((channels * kernel ** 2,) if kernel else ())
        if path[dst] is None or len(step) > len(path[dst]):
            path[dst] = step
    gain = 0.5 * math.log(var[3]) if var[3] > 0 else DEAD_GAIN
    return gain, path[3] or ()


def nb201_structure(space: Any, arch: Arch) -> Structure:
    """NB201: a 3x3 stem, three stages of identical cells, a residual reduction block (two
    3x3 convs, strided; shortcut: 2x2 average pool and 1x1 conv) opening stages 1 and 2."""
    space.to_dna(arch)
    c, side = space.channels, space.input_size
    stem_gain, stem_width = _conv_gain(space.input_channels, 3), space.input_channels * 9.0
    stages = []
    for s in range(3):
        cell_gain, cell_widths = nb201_cell(arch["ops"], c)
        gains = [cell_gain] * space.cells_per_stage
        widths = list(cell_widths) * space.cells_per_stage
        if s == 0:
            gains.insert(0, stem_gain)
            widths.insert(0, stem_width)
        else:
            c_in, side = c // 2, side // 2
            main = (c_in * 9 / 2.0) * (c * 9 / 2.0)
            gains.insert(0, 0.5 * math.log(main + c_in / 4.0))
            widths[:0] = [c_in * 9.0, c * 9.0]
        stages.append(Stage(c, side, tuple(gains), tuple(widths)))
        c *= 2
    return Structure(tuple(stages), (space.cells_per_stage,) * 3)


def structure_of(space: SearchSpace, arch: Arch) -> Structure:
    """The structure of `arch` in a supported space (UnsupportedSpaceError otherwise)."""
    if callable(getattr(space, "net_spec", None)):
        return mbconv_structure(space, arch)
    if space.name == "nb201":
        return nb201_structure(space, arch)
    raise UnsupportedSpaceError(f"space: the deepmad strategy designs chains of conv blocks "
                                f"(spaces mbconv, nb201), not {space.name!r}")


# ---- the strategy -------------------------------------------------------------------------------
@register_strategy
class DeepMAD(Strategy):
    """Maximise the network's entropy under DeepMAD's effectiveness bound and the budgets,
    by evolutionary search over the structure with no training (solved at the first ask);
    propose the best designs in order."""

    name = "deepmad"
    description = ("DeepMAD: training-free design by mathematical programming (entropy under "
                   "an effectiveness bound and FLOPs/params/latency budgets)")

    def __init__(
        self, space: SearchSpace, seed: int = 0, rho: float | None = 1.0,
        max_flops: float | None = None, max_params: float | None = None,
        iterations: int = 2000, population: int = 32, last_stage_weight: float = 8.0,
        depth_penalty: float = 10.0,
    ) -> None:
        super().__init__(space, seed)
        self.rho = positive_number("rho", rho, optional=True)
        self.max_flops = positive_number("max_flops", max_flops, optional=True)
        self.max_params = positive_number("max_params", max_params, optional=True)
        self.iterations = int_at_least("iterations", iterations, 0)
        self.population_size = int_at_least("population", population, 2)
        self.last_stage_weight = non_negative("last_stage_weight", last_stage_weight)
        self.depth_penalty = non_negative("depth_penalty", depth_penalty)
        structure_of(space, space.sample(np.random.default_rng(0)))  # the space is supported
        self.solved = False
        #: the solver's best feasible designs, best first: (key, objective)
        self.designs: list[tuple[str, float]] = []
        self.next = 0  # index in `designs` of the next proposal
        self.smallest_proposed = False  # the fallback when no design is feasible

    # ---- the program -------------------------------------------------------------------------
    def objective(self, arch: Arch, structure: Structure | None = None) -> float:
        """The program's objective: entropy less the depth penalty."""
        structure = structure or structure_of(self.space, arch)
        return entropy(structure, self.last_stage_weight) \
            - depth_penalty(structure, self.depth_penalty)

    def feasible(self, arch: Arch, key: str | None = None,
                 structure: Structure | None = None) -> bool:
        """The effectiveness bound, the budgets of `strategy_args` (analytic FLOPs, params)
        and the job's constraints whose values are known before evaluation."""
        if self.rho is not None:
            structure = structure or structure_of(self.space, arch)
            if effectiveness(structure) > self.rho:
                return False
        if self.max_flops is not None and self.space.flops(arch) > self.max_flops:
            return False
        if self.max_params is not None and self.space.params(arch) > self.max_params:
            return False
        return not self.violates(arch, key)

    def solve(self) -> list[tuple[str, float]]:
        """The evolutionary solver: a population of the best feasible designs (seeded with
        the space's smallest network where it has one, and random samples); each iteration
        mutates a random member, scores the child if new and feasible, and replaces the
        worst member when the child beats it. Returns every feasible design seen, best
        first (ties: in the order found)."""
        seen: dict[str, float] = {}

        def consider(arch: Arch) -> tuple[Arch, float] | None:
            key = self.space.key(arch)
            if key in seen:
                return None
            structure = structure_of(self.space, arch)
            if not self.feasible(arch, key, structure):
                seen[key] = -math.inf
                return None
            seen[key] = value = self.objective(arch, structure)
            return arch, value

        population: list[tuple[Arch, float]] = []
        starts = [self.space.min_arch()] if callable(getattr(self.space, "min_arch", None)) \
            else []
        starts += [self.space.sample(self.rng) for _ in range(4 * self.population_size)]
        for arch in starts:
            if len(population) >= self.population_size:
                break
            if (member := consider(arch)) is not None:
                population.append(member)
        for _ in range(self.iterations):
            if not population:
                break
            parent = population[int(self.rng.integers(len(population)))][0]
            child = self.space.mutate(parent, self.rng)
            if (member := consider(child)) is None:
                continue
            if len(population) < self.population_size:
                population.append(member)
                continue
            worst = min(range(len(population)), key=lambda i: population[i][1])
            if member[1] > population[worst][1]:
                population[worst] = member
        found = [(k, v) for k, v in seen.items() if v > -math.inf]
        order = sorted(range(len(found)), key=lambda i: (-found[i][1], i))
        return [found[i] for i in order[:KEEP]]

    # ---- ask / tell ------------------------------------------------------------------------------
    def ask(self) -> Arch:
        if not self.solved:
            self.designs = self.solve()
            self.solved = True
        while self.next < len(self.designs):
            key = self.designs[self.next][0]
            self.next += 1
            arch = self.space.from_key(key)
            if self.acceptable(arch, key):
                return arch
        if self.designs:  # every solved design proposed: neighbours of the best
            return self.mutate_or_sample(self.space.from_key(self.designs[0][0]))
        # No design meets the bounds: the space's smallest network (the nearest to any
        # budget), then samples within the job's known constraints.
        smallest = getattr(self.space, "min_arch", None)
        if not self.smallest_proposed and callable(smallest):
            self.smallest_proposed = True
            if self.acceptable(smallest()):
                return smallest()
        return self.draw_acceptable(lambda: self.space.sample(self.rng))

    def tell(self, trial: TrialView) -> None:
        """Training-free: the design does not depend on the trials' results."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "solved": self.solved, "next": self.next,
                "designs": [[k, v] for k, v in self.designs],
                "smallest_proposed": self.smallest_proposed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.solved = bool(state["solved"])
        self.next = int(state["next"])
        self.designs = [(str(k), float(v)) for k, v in state["designs"]]
        self.smallest_proposed = bool(state.get("smallest_proposed", False))

    def design_report(self, arch: Arch) -> dict[str, float]:
        """The program's terms for one design (for reports and the benchmark)."""
        structure = structure_of(self.space, arch)
        return {"entropy": entropy(structure, self.last_stage_weight),
                "effectiveness": effectiveness(structure),
                "depth_penalty": depth_penalty(structure, self.depth_penalty),
                "objective": self.objective(arch),
                "flops": float(self.space.flops(arch)),
                "params": float(self.space.params(arch))}


__all__ = ["DeepMAD", "Stage", "Structure", "effectiveness", "entropy", "structure_of"]
