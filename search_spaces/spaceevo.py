"""SpaceEvo (Zhang et al., ICCV 2023): search the *space* for INT8 inference on a device.

The searched object is a quant space (`search_spaces.quant.QuantSpace`), not a network:
per stage, which operation its blocks use (SpaceEvo's "elastic stage" has one block type)
and which window of consecutive widths they choose from, out of a hyperspace of operations
(`OPS`) and widths (`HYPER_WIDTHS` x 2^stage). A candidate space is scored by its
quality-latency (Q-T) score: for each latency budget, the quality of the best networks the
space holds within it, averaged over the budgets:

- latency: INT8 latency predicted by a latency predictor (`predictors.latency`, fitted on
  INT8 latencies measured on this CPU for random networks of the hyperspace,
  `measure_int8_latencies`);
- quality: a quantization-aware accuracy estimate, a training-free proxy computed on the
  fake-quantized network at its searched bit-widths (default the evolved `emq` proxy),
  standardised over the hyperspace sample so budgets and spaces compare.

The evolution is an aging evolution over candidate spaces (mutation: one stage's operation
or width window). The found space is emitted as `space_args` of the `quant` space
(`stage_ops`, `stage_widths`), usable by any job (`space: quant`).

Where we simplify: SpaceEvo scores a space with a quantization-aware supernet trained by
block-wise distillation; here the quality is a training-free proxy of the quantized
network, and the hyperspace is the quant space's own operations and widths.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .quant import OPS, QuantSpace

#: Hyperspace widths of stage 0 (stage s: times 2^s); a space takes `WINDOW` consecutive ones.
HYPER_WIDTHS: tuple[int, ...] = (8, 16, 24, 32, 40, 48)
WINDOW = 3

#: A candidate space: per stage (operation index in OPS, first width index in HYPER_WIDTHS).
Genome = tuple[tuple[int, int], ...]


def hyperspace(base_args: dict[str, Any]) -> QuantSpace:
    """The quant space holding every operation and every hyperspace width per stage."""
    stages = int(base_args.get("stages", 3))
    return QuantSpace(**{**base_args, "stage_widths": [[w * 2**s for w in HYPER_WIDTHS]
                                                        for s in range(stages)]})


def space_args(genome: Genome, base_args: dict[str, Any]) -> dict[str, Any]:
    """The `quant` space_args of a candidate space (what SpaceEvo emits)."""
    return {**base_args,
            "stage_ops": [[OPS[op]] for op, _ in genome],
            "stage_widths": [[w * 2**s for w in HYPER_WIDTHS[start:start + WINDOW]]
                             for s, (_, start) in enumerate(genome)]}


def random_genome(stages: int, rng: random.Random) -> Genome:
    return tuple((rng.randrange(len(OPS)), rng.randrange(len(HYPER_WIDTHS) - WINDOW + 1))
                 for _ in range(stages))


def mutate_genome(genome: Genome, rng: random.Random) -> Genome:
    """Change one stage's operation or width window."""
    while True:
        stage = rng.randrange(len(genome))
        op, start = genome[stage]
        if rng.random() < 0.5:
            op = rng.randrange(len(OPS))
        else:
            start = rng.randrange(len(HYPER_WIDTHS) - WINDOW + 1)
        child = genome[:stage] + ((op, start),) + genome[stage + 1:]
        if child != genome:
            return child


# ---- INT8 latency -----------------------------------------------------------------------
def measure_int8_latencies(space: QuantSpace, archs: Sequence[dict[str, Any]],
                           repeats: int = 20, seed: int = 0) -> list[float]:
    """INT8 latency (ms, batch 1, 1 thread, this CPU) of each architecture's real INT8
    model (`QuantSpace.int8_model`, calibrated on a random batch): the fastest of `repeats`
    timed passes, the estimate least disturbed by other processes on a shared machine."""
    import time

    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    out = []
    try:
        for i, arch in enumerate(archs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + i)
                calibration = torch.randn(8, *space.input_shape())
                model = space.int8_model(arch, calibration)
            x = torch.randn(1, *space.input_shape())
            times = []
            with torch.inference_mode():
                for _ in range(3):
                    model(x)
                for _ in range(repeats):
                    start = time.perf_counter()
                    model(x)
                    times.append((time.perf_counter() - start) * 1000.0)
            out.append(min(times))
    finally:
        torch.set_num_threads(previous)
    return out


# ---- the Q-T score --------------------------------------------------------------------------
@dataclass
class SpaceScorer:
    """Scores candidate spaces: `latency(archs)` predicts INT8 latency (ms) of hyperspace
    architectures, `quality(arch)` estimates the quantized accuracy (larger is better)."""

    base_args: dict[str, Any]
    latency: Callable[[list[dict[str, Any]]], np.ndarray]
    quality: Callable[[dict[str, Any]], float]
    budgets_ms: Sequence[float]
    samples: int = 16
    top: int = 3
    seed: int = 0
    cache: dict[str, float] = field(default_factory=dict)

    def score(self, genome: Genome) -> float:
        """Mean over the budgets of the mean quality of the `top` sampled networks within
        the budget (a budget no sample meets counts as -3: three standard deviations
        below the hyperspace's mean)."""
        space = QuantSpace(**space_args(genome, self.base_args))
        rng = np.random.default_rng(self.seed)
        archs = [space.sample(rng) for _ in range(self.samples)]
        latencies = self.latency(archs)
        qualities = np.array([self._quality(space, a) for a in archs])
        per_budget = []
        for budget in self.budgets_ms:
            within = np.sort(qualities[latencies <= budget])[::-1][: self.top]
            per_budget.append(float(within.mean()) if len(within) else -3.0)
        return float(np.mean(per_budget))

    def _quality(self, space: QuantSpace, arch: dict[str, Any]) -> float:
        key = space.key(arch)
        if key not in self.cache:
            self.cache[key] = float(self.quality(arch))
        return self.cache[key]


@dataclass
class SpaceEvoResult:
    best: Genome
    best_score: float
    evaluated: int
    history: list[float]


def evolve_space(scorer: SpaceScorer, stages: int, *, population: int = 8, tournament: int = 3,
                 steps: int = 20, seed: int = 0) -> SpaceEvoResult:
    """Aging evolution over candidate spaces, fitness the Q-T score (deterministic for a seed
    and a deterministic scorer)."""
    rng = random.Random(seed)
    scores: dict[Genome, float] = {}

    def score(g: Genome) -> float:
        if g not in scores:
            value = scorer.score(g)
            scores[g] = value if math.isfinite(value) else -math.inf
        return scores[g]

    pool = deque(random_genome(stages, rng) for _ in range(population))
    best = max(pool, key=score)
    history = []
    for _ in range(steps):
        parent = max((pool[rng.randrange(len(pool))] for _ in range(tournament)), key=score)
        child = mutate_genome(parent, rng)
        pool.append(child)
        pool.popleft()
        if score(child) > score(best):
            best = child
        history.append(scores[best])
    return SpaceEvoResult(best, scores[best], len(scores), history)


def proxy_quality(space_like: QuantSpace, proxy: str, batch: tuple[Any, Any], seed: int = 0
                  ) -> Callable[[dict[str, Any]], float]:
    """A quantization-aware accuracy estimate: `proxy` on the fake-quantized network (the
    space's `build`, at the architecture's bit-widths) on `batch`."""
    from predictors.proxies import compute_proxies

    def quality(arch: dict[str, Any]) -> float:
        return compute_proxies(lambda: space_like.build(arch), batch, [proxy], seed=seed)[proxy]

    return quality
