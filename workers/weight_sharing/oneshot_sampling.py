"""Two `oneshot` training variants of issue 19: ElasticViT's sampler and a balanced mixture of
supernets.

ElasticViT (Tang et al., ICCV 2023), `sampler: elasticvit`. The FLOPs range is cut into
`flops_buckets` levels holding equal shares of the space (quantiles of the FLOPs of a seeded
uniform sample). Complexity-aware part: the random subnets walk over the levels, each one in the
same level as the previous random subnet or a neighbouring one (a step of -1, 0 or +1, clipped),
so consecutive subnets have close FLOPs and their gradients conflict little. Performance-aware
part: each level keeps a memory bank of its `bank_size` best subnets measured so far (lowest
distillation loss, on the whole global batch, when they trained); with probability `bank_prob`
the subnet is drawn from the level's bank, otherwise it is a fresh uniform sample that falls
in the level (the first of up to `MAX_DRAWS`; the closest one by FLOPs if none does).

Balanced Mixture of SuperNets (Roshtkhari et al.), `supernets: K`. K supernets share nothing;
an architecture's downsampling configuration (`pooling_config`: the hybrid space's
`downsample` positions; for mbconv, whose strides are fixed, the input resolution and the
depth of each stage, which place the stride-2 layers in the layer sequence) is routed to one
of them. The routing is learned from the supernets' losses: `loss_ema[c, k]` tracks the loss
of configuration c when trained in supernet k (0 until tried, so untried pairs look best and
get explored), the soft assignment is `exp(-loss_ema / temperature)` balanced by Sinkhorn
iterations so that every supernet receives an equal share (1/K) of the configurations' mass,
and each training step draws the supernet of each subnet from that balanced distribution.
Evaluation uses the hard assignment with equal capacity (an optimal transport of the
configurations to the supernets, at most ceil(n/K) each: `linear_sum_assignment`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import Arch, SearchSpace

SAMPLERS = ("default", "elasticvit")
#: Uniform draws tried to land a fresh subnet in the target FLOPs level.
MAX_DRAWS = 50
#: Uniform samples whose FLOPs quantiles cut the levels.
LEVEL_SAMPLES = 512
#: Decay of the mixture's per-(configuration, supernet) loss averages.
LOSS_DECAY = 0.9
#: Softmax temperature of the mixture's routing (losses are cross entropies in nats).
ROUTING_TEMPERATURE = 0.1
SINKHORN_ITERATIONS = 50


# ---- ElasticViT: FLOPs levels, adjacent walk, memory banks --------------------------------------
class ElasticViTSampler:
    """The random subnets of the sandwich rule, drawn with the shared seeded `rng` (identical on
    every rank); `update` feeds it the global-batch losses of the subnets it drew."""

    def __init__(self, space: SearchSpace, flops: Any, levels: int, bank_size: int,
                 bank_prob: float, seed: int) -> None:
        self.space, self.flops = space, flops
        self.bank_size, self.bank_prob = bank_size, bank_prob
        rng = np.random.default_rng([seed, 3])
        sample = np.array([flops(space.sample(rng)) for _ in range(LEVEL_SAMPLES)], dtype=float)
        cuts = np.unique(np.quantile(sample, np.linspace(0, 1, levels + 1)[1:-1]))
        self.edges = [float(c) for c in cuts if c > sample.min()]  # no empty level
        self.level: int | None = None
        self.banks: list[list[tuple[float, str, Arch]]] = [[] for _ in range(self.levels)]

    @property
    def levels(self) -> int:
        return len(self.edges) + 1

    def level_of(self, arch: Arch) -> int:
        return int(np.searchsorted(self.edges, self.flops(arch), side="right"))

    def draw(self, rng: np.random.Generator) -> tuple[Arch, int]:
        """The next random subnet and its target level (adjacent to the previous one)."""
        if self.level is None:
            target = int(rng.integers(self.levels))
        else:
            target = int(np.clip(self.level + int(rng.integers(-1, 2)), 0, self.levels - 1))
        self.level = target
        bank = self.banks[target]
        if bank and rng.random() < self.bank_prob:
            return bank[int(rng.integers(len(bank)))][2], target
        best, best_gap = None, math.inf
        for _ in range(MAX_DRAWS):
            arch = self.space.sample(rng)
            gap = self._gap(arch, target)
            if gap == 0:
                return arch, target
            if gap < best_gap:
                best, best_gap = arch, gap
        assert best is not None
        return best, target

    def _gap(self, arch: Arch, level: int) -> float:
        """How far `arch`'s FLOPs lie outside `level` (0 inside)."""
        f = self.flops(arch)
        low = self.edges[level - 1] if level > 0 else -math.inf
        high = self.edges[level] if level < len(self.edges) else math.inf
        if f < low:
            return low - f
        return f - high + 1.0 if f >= high else 0.0

    def update(self, arch: Arch, loss: float) -> None:
        """Record `arch`'s measured loss in its level's bank (keep the `bank_size` best)."""
        key = self.space.key(arch)
        level = self.level_of(arch)
        bank = [entry for entry in self.banks[level] if entry[1] != key]
        bank.append((float(loss), key, arch))
        bank.sort(key=lambda entry: (entry[0], entry[1]))
        self.banks[level] = bank[:self.bank_size]

    def state(self) -> dict[str, Any]:
        return {"level": self.level,
                "banks": [[[loss, key, arch] for loss, key, arch in bank] for bank in self.banks]}

    def load(self, state: dict[str, Any]) -> None:
        self.level = state["level"]
        self.banks = [[(float(e[0]), str(e[1]), e[2]) for e in bank] for bank in state["banks"]]


# ---- Balanced mixture of supernets -------------------------------------------------------------
def pooling_config(space: SearchSpace, arch: Arch) -> tuple[int, ...]:
    """The downsampling configuration that routes `arch` to a supernet (see the docstring)."""
    if space.name == "hybrid":
        return tuple(int(i) for i in arch["downsample"])
    return (int(arch["resolution"]), *(len(stage["blocks"]) for stage in arch["stages"]))


def pooling_configs(space: SearchSpace) -> list[tuple[int, ...]]:
    """Every downsampling configuration of `space`, in a fixed order."""
    if space.name == "hybrid":
        return [tuple(c) for c in itertools.product(*space.downsample_windows)]
    stages = len(space.stage_channels)
    return [(r, *d) for r in space.resolutions
            for d in itertools.product(space.depths, repeat=stages)]


def sinkhorn(scores: np.ndarray, iterations: int = SINKHORN_ITERATIONS) -> np.ndarray:
    """Rows sum to 1 (a distribution per configuration), columns to n/K (balanced)."""
    p = np.exp(scores - scores.max())
    n, k = p.shape
    for _ in range(iterations):
        p /= p.sum(axis=0, keepdims=True) / (n / k)
        p /= p.sum(axis=1, keepdims=True)
    return p


class SupernetMixture(nn.Module):
    """K supernets and the learned balanced routing; `forward`/`extract` use the hard
    assignment, `member(k)` one supernet (training)."""

    def __init__(self, space: SearchSpace, members: list[nn.Module]) -> None:
        super().__init__()
        self.space = space
        self.members = nn.ModuleList(members)
        self.configs = pooling_configs(space)
        self._index = {c: i for i, c in enumerate(self.configs)}
        shape = (len(self.configs), len(members))
        self.register_buffer("loss_ema", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("visits", torch.zeros(shape, dtype=torch.int64))
        self._hard: tuple[int, list[int]] | None = None

    def config_index(self, arch: Arch) -> int:
        return self._index[pooling_config(self.space, arch)]

    def probabilities(self) -> np.ndarray:
        """The balanced soft assignment (configurations x supernets)."""
        return sinkhorn(-self.loss_ema.cpu().numpy() / ROUTING_TEMPERATURE)

    def route(self, arch: Arch, rng: np.random.Generator) -> int:
        """A supernet for training `arch`, drawn from the balanced assignment."""
        p = self.probabilities()[self.config_index(arch)]
        return int(rng.choice(len(p), p=p / p.sum()))

    def record(self, arch: Arch, member: int, loss: float) -> None:
        i = self.config_index(arch)
        first = int(self.visits[i, member]) == 0
        self.loss_ema[i, member] = loss if first else (
            LOSS_DECAY * float(self.loss_ema[i, member]) + (1 - LOSS_DECAY) * loss)
        self.visits[i, member] += 1

    def assignment(self) -> list[int]:
        """The hard, balanced assignment: configuration index -> supernet (each supernet gets
        floor(n/K) or ceil(n/K) configurations)."""
        from scipy.optimize import linear_sum_assignment

        stamp = int(self.visits.sum())
        if self._hard is None or self._hard[0] != stamp:
            n, k = len(self.configs), len(self.members)
            cost = -np.log(self.probabilities() + 1e-300)
            # floor(n/K) slots per supernet that must all fill (a large bonus), then one
            # optional slot each for the n mod K left
            columns = np.concatenate([np.repeat(np.arange(k), n // k), np.arange(k)])
            bonus = np.where(np.arange(len(columns)) < k * (n // k), 1e6, 0.0)
            rows, cols = linear_sum_assignment(cost[:, columns] - bonus)
            hard = [0] * n
            for r, c in zip(rows, cols, strict=True):
                hard[int(r)] = int(columns[c])
            self._hard = (stamp, hard)
        return self._hard[1]

    def member_of(self, arch: Arch) -> int:
        return self.assignment()[self.config_index(arch)]

    def forward(self, x: torch.Tensor, arch: Arch, member: int | None = None) -> torch.Tensor:
        return self.members[self.member_of(arch) if member is None else member](x, arch)

    def extract(self, arch: Arch) -> nn.Module:
        return self.members[self.member_of(arch)].extract(arch)
