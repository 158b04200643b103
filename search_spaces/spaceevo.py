"""SpaceEvo (Zhang et al., ICCV 2023): search the *space* for INT8 inference on a device.

The searched object is a quant space (`search_spaces.quant.QuantSpace`), not a network:
per stage, which operation its blocks use (SpaceEvo's "elastic stage" has one block type)
and which window of consecutive widths they choose from, out of a hyperspace of operations
(`OPS`) and widths (`HYPER_WIDTHS` x 2^stage). SpaceEvo designs for INT8 inference, so
every network it samples has 8-bit weights and activations (`int8_arch`).

A candidate space is scored by its quality-latency (Q-T) score, as in the reference code:
for each latency target T, sample networks of the space, predict their INT8 latency and
their quantized loss; with p the share predicted within T and L the mean loss of the `top`
best of those within T, the space scores 1 / (max(1, (t / p)^a) * L) (t = 0.1, a = 0.01:
a space that can hardly meet T is penalised), summed over the targets.

- latency: `BlockLatencyPredictor`, nn-Meter's kernel-level method: each block of the
  hyperspace (operation, kernel, activation, in/out channels, stride, input side) timed
  alone as a real INT8 module (`measure_block_latencies`), one random forest per operation
  fitted on those, a network's latency = the sum of its blocks', each operation's scaled by
  a_op, + b, with a_op >= 0 and b >= 0 fitted on whole networks timed as INT8 models
  (`measure_int8_latencies`): what a block costs inside a network rather than alone, and the
  stem, head and quantize/dequantize. Timing: median of
  interleaved repeats of the thread's CPU time (the other processes of a shared machine
  neither add their time nor bias one network over another).
- loss: a quantization-aware estimate, `StageLoss` (an additive per-stage model of the log
  loss, as SpaceEvo's per-block loss table, fitted to the validation loss of short
  quantization-aware trainings), or any callable (the `emq` proxy through `proxy_quality`).

The evolution is an aging evolution over candidate spaces (mutation: one stage's operation
or width window). The found space is emitted as `space_args` of the `quant` space
(`stage_ops`, `stage_widths`), usable by any job (`space: quant`).

Where we simplify: SpaceEvo's per-block losses come from block-wise distillation of a
quantized supernet against a teacher; here the per-stage model is fitted to whole networks
trained briefly with QAT, and the hyperspace is the quant space's own operations and widths.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .quant import ACTIVATIONS, KERNELS, OPS, QuantSpace, _conv_out
from .validation import ArgumentError, int_at_least, non_negative, positive_int

#: Hyperspace widths of stage 0 (stage s: times 2^s); a space takes `WINDOW` consecutive ones.
HYPER_WIDTHS: tuple[int, ...] = (8, 16, 24, 32, 40, 48)
WINDOW = 3

#: A candidate space: per stage (operation index in OPS, first width index in HYPER_WIDTHS).
Genome = tuple[tuple[int, int], ...]

#: Q-T latency penalty of the reference code: max(1, (LAT_LOSS_T / p) ** LAT_LOSS_A).
LAT_LOSS_T, LAT_LOSS_A = 0.1, 0.01
#: The loss of a target no sampled network meets (the reference's 1e5).
NO_NETWORK_LOSS = 1e5


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


def int8_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """`arch` with 8-bit weights and activations in every block (what SpaceEvo deploys)."""
    return {"layers": [{**layer, "bits": 8, "abits": 8} for layer in arch["layers"]]}


def sample_int8(space: QuantSpace, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    return [int8_arch(space.sample(rng)) for _ in range(n)]


# ---- INT8 latency measurement -----------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One searched block as the INT8 runtime sees it (the bit-widths do not change it)."""

    op: str
    kernel: int
    act: str
    cin: int
    cout: int
    stride: int
    side: int  # input height = width

    def macs(self) -> int:
        out = _conv_out(self.side, self.stride)
        k2 = self.kernel ** 2
        if self.op == "conv":
            return self.cin * self.cout * k2 * out * out
        if self.op == "dwsep":
            return self.cin * k2 * out * out + self.cin * self.cout * out * out
        hidden = self.cin * int(self.op[2:])
        return (self.cin * hidden * self.side ** 2 + hidden * k2 * out * out
                + hidden * self.cout * out * out)


def blocks_of(space: QuantSpace, arch: dict[str, Any]) -> list[Block]:
    """The searched blocks of `arch`, with the channels and input side each one sees."""
    side, c, out = space.input_size, space.stem_width, []
    for layer, stride in zip(arch["layers"], space.strides(), strict=True):
        out.append(Block(layer["op"], layer["kernel"], layer["act"], c, layer["width"],
                         stride, side))
        side, c = _conv_out(side, stride), layer["width"]
    return out


def _interleaved_medians(models: Sequence[Any], inputs: Sequence[Any], repeats: int,
                         seed: int) -> list[float]:
    """Median over `repeats` rounds of each model's forward time (ms of this thread's CPU
    time), every round visiting the models in a fresh random order, so that a disturbance
    (another process's burst, a frequency change) spreads over all of them."""
    import time

    import torch

    rng = random.Random(seed)
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model, x in zip(models, inputs, strict=True):
            model(x)
            model(x)
        order = list(range(len(models)))
        for _ in range(repeats):
            rng.shuffle(order)
            for i in order:
                start = time.thread_time()
                models[i](inputs[i])
                times[i].append((time.thread_time() - start) * 1000.0)
    return [float(np.median(t)) for t in times]


def _one_thread(fn: Callable[[], list[float]]) -> list[float]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


def measure_int8_latencies(space: QuantSpace, archs: Sequence[dict[str, Any]],
                           repeats: int = 20, seed: int = 0) -> list[float]:
    """INT8 latency (ms, batch 1, 1 thread, this CPU) of each architecture's real INT8
    model (`QuantSpace.int8_model`, calibrated on a random batch): the median of `repeats`
    interleaved timings of the thread's CPU time (`_interleaved_medians`)."""
    import torch

    repeats = positive_int("repeats", repeats)

    def run() -> list[float]:
        models = []
        for i, arch in enumerate(archs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + i)
                models.append(space.int8_model(arch, torch.randn(8, *space.input_shape())))
        inputs = [torch.randn(1, *space.input_shape()) for _ in archs]
        return _interleaved_medians(models, inputs, repeats, seed)

    return _one_thread(run)


def measure_block_latencies(blocks: Sequence[Block], repeats: int = 20, seed: int = 0
                            ) -> list[float]:
    """INT8 latency (ms) of each block alone (quantize -> block -> dequantize, fused and
    converted as in `to_int8`), timed as `measure_int8_latencies` does."""
    import torch
    from torch import nn

    from .layers.quant_net import make_block, to_int8

    repeats = positive_int("repeats", repeats)

    def run() -> list[float]:
        models, inputs = [], []
        for i, b in enumerate(blocks):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + i)
                module = nn.Sequential(make_block(b.op, b.cin, b.cout, b.kernel, b.stride,
                                                  b.act, 8, fake_quant=False))
                for _ in range(2):  # off the initial BN statistics
                    module.train()(torch.randn(4, b.cin, b.side, b.side))
                models.append(to_int8(module.eval(), torch.randn(4, b.cin, b.side, b.side)))
            inputs.append(torch.randn(1, b.cin, b.side, b.side))
        return _interleaved_medians(models, inputs, repeats, seed)

    return _one_thread(run)


def block_features(blocks: Sequence[Block]) -> np.ndarray:
    """nn-Meter's kernel features: input side, channels in and out, kernel, stride, plus
    the activation (ReLU6 is a separate INT8 operator, ReLU fuses) and log MACs."""
    return np.array([[b.side, b.cin, b.cout, b.kernel, b.stride, float(b.act == "relu6"),
                      math.log(b.macs())] for b in blocks], dtype=np.float64)


class BlockLatencyPredictor:
    """Kernel-level INT8 latency (nn-Meter): one random forest per operation on
    `block_features` of blocks timed alone; a network = sum over its blocks of a_op x the
    block's latency, + b, a and b fitted on whole networks (`fit_overhead`)."""

    def __init__(self, space: QuantSpace, trees: int = 200, seed: int = 0) -> None:
        self.space = space
        self.trees = positive_int("trees", trees)
        self.seed = int_at_least("seed", seed, 0)
        self.models: dict[str, Any] = {}
        self.scales: dict[str, float] = dict.fromkeys(OPS, 1.0)
        self.offset = 0.0
        self._cache: dict[Block, float] = {}

    def fit_blocks(self, blocks: Sequence[Block], latencies: Sequence[float]
                   ) -> BlockLatencyPredictor:
        from sklearn.ensemble import RandomForestRegressor

        y = np.asarray(latencies, dtype=np.float64)
        if len(blocks) != len(y) or not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("need one finite positive latency per block")
        for op in sorted({b.op for b in blocks}):
            idx = [i for i, b in enumerate(blocks) if b.op == op]
            forest = RandomForestRegressor(n_estimators=self.trees, min_samples_leaf=2,
                                           random_state=self.seed, n_jobs=1)
            self.models[op] = forest.fit(block_features([blocks[i] for i in idx]), y[idx])
        self._cache.clear()
        return self

    def block_latency(self, blocks: Sequence[Block]) -> np.ndarray:
        """Predicted latency (ms) of each block alone."""
        missing = sorted({b for b in blocks if b not in self._cache},
                         key=lambda b: (b.op, b.side, b.cin, b.cout, b.kernel, b.act))
        for op in {b.op for b in missing}:
            if op not in self.models:
                raise ValueError(f"no timed block of operation {op!r}")
            some = [b for b in missing if b.op == op]
            for b, value in zip(some, self.models[op].predict(block_features(some)),
                                strict=True):
                self._cache[b] = float(value)
        return np.array([self._cache[b] for b in blocks])

    def op_sums(self, archs: Sequence[dict[str, Any]]) -> np.ndarray:
        """Per network, the predicted latency of its blocks summed per operation (columns
        in the order of `OPS`)."""
        out = np.zeros((len(archs), len(OPS)))
        for i, arch in enumerate(archs):
            blocks = blocks_of(self.space, arch)
            for b, ms in zip(blocks, self.block_latency(blocks), strict=True):
                out[i, OPS.index(b.op)] += ms
        return out

    def block_sum(self, archs: Sequence[dict[str, Any]]) -> np.ndarray:
        """nn-Meter's plain prediction: the sum of the blocks' predicted latencies."""
        return self.op_sums(archs).sum(axis=1)

    def fit_overhead(self, archs: Sequence[dict[str, Any]], latencies: Sequence[float]
                     ) -> BlockLatencyPredictor:
        """Non-negative least squares of the measured network latencies on their blocks'
        sums per operation and a constant: per operation, how much a block costs inside a
        network against alone (`scales`), and the stem, head and quantize/dequantize
        (`offset`)."""
        from scipy.optimize import nnls

        y = np.asarray(latencies, dtype=np.float64)
        if len(y) != len(archs) or len(y) < 2:
            raise ValueError("the overhead fit needs at least 2 networks, one latency each")
        x = np.hstack([self.op_sums(archs), np.ones((len(y), 1))])
        used = np.flatnonzero(x.any(axis=0))
        coef = np.ones(x.shape[1])
        coef[-1] = 0.0
        coef[used] = nnls(x[:, used], y)[0]
        self.scales = dict(zip(OPS, (float(c) for c in coef[:-1]), strict=True))
        self.offset = float(coef[-1])
        return self

    def predict(self, archs: Sequence[dict[str, Any]]) -> np.ndarray:
        scales = np.array([self.scales[op] for op in OPS])
        return self.op_sums(archs) @ scales + self.offset


# ---- a quantization-aware loss estimate --------------------------------------------------
def stage_features(archs: Sequence[dict[str, Any]], layers_per_stage: int) -> np.ndarray:
    """Per stage (SpaceEvo's unit, an elastic stage): how many of its blocks use each
    operation, kernel 5 and ReLU6, and the sum of its blocks' log2 widths (weights and
    activations are all 8-bit in SpaceEvo's networks)."""
    rows = []
    for arch in archs:
        row: list[float] = []
        layers = arch["layers"]
        for start in range(0, len(layers), layers_per_stage):
            stage = layers[start:start + layers_per_stage]
            row += [float(sum(la["op"] == op for la in stage)) for op in OPS]
            row += [float(sum(la["kernel"] == KERNELS[-1] for la in stage)),
                    float(sum(la["act"] == ACTIVATIONS[-1] for la in stage)),
                    float(sum(math.log2(la["width"]) for la in stage))]
        rows.append(row)
    return np.array(rows, dtype=np.float64)


class StageLoss:
    """An additive per-stage model of the log loss (SpaceEvo sums per-block losses from its
    table; here per stage, multiplicative in the loss so a prediction stays positive): ridge
    regression of log(measured loss) (the validation loss of a short QAT run) on
    `stage_features`, features standardised, `alpha` the ridge weight."""

    def __init__(self, alpha: float = 10.0, layers_per_stage: int = 2) -> None:
        self.alpha = non_negative("alpha", alpha)
        self.layers_per_stage = positive_int("layers_per_stage", layers_per_stage)
        self.coef: np.ndarray | None = None

    def fit(self, archs: Sequence[dict[str, Any]], losses: Sequence[float]) -> StageLoss:
        x, y = stage_features(archs, self.layers_per_stage), np.asarray(losses, dtype=float)
        if len(y) != len(x) or len(y) < 2 or not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("need at least 2 architectures, one finite positive loss each")
        y = np.log(y)
        self.mean, self.std = x.mean(axis=0), x.std(axis=0)
        self.std[self.std == 0] = 1.0
        z = (x - self.mean) / self.std
        gram = z.T @ z + self.alpha * np.eye(z.shape[1])
        self.coef = np.linalg.solve(gram, z.T @ (y - y.mean()))
        self.intercept = float(y.mean())
        return self

    def predict(self, archs: Sequence[dict[str, Any]]) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("the loss model is not fitted")
        z = (stage_features(archs, self.layers_per_stage) - self.mean) / self.std
        return np.exp(self.intercept + z @ self.coef)


# ---- the Q-T score --------------------------------------------------------------------------
@dataclass
class SpaceScorer:
    """Scores candidate spaces: `latency(archs)` predicts INT8 latency (ms) of hyperspace
    architectures, `loss(archs)` their quantized loss (smaller is better, positive);
    `samples` networks per space, the `top` best within each of `budgets_ms` averaged."""

    base_args: dict[str, Any]
    latency: Callable[[list[dict[str, Any]]], np.ndarray]
    loss: Callable[[list[dict[str, Any]]], np.ndarray]
    budgets_ms: Sequence[float]
    samples: int = 1000
    top: int = 10
    min_loss: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        self.samples = positive_int("samples", self.samples)
        self.top = positive_int("top", self.top)
        self.min_loss = non_negative("min_loss", self.min_loss, strict=True)
        self.seed = int_at_least("seed", self.seed, 0)
        budgets = self.budgets_ms
        if not (isinstance(budgets, list | tuple) and budgets and all(
                isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b)
                and b > 0 for b in budgets)):
            raise ArgumentError("budgets_ms", "must be a non-empty list of positive "
                                              f"latencies (ms), got {budgets!r}")

    def sample(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        space = QuantSpace(**args)
        return sample_int8(space, np.random.default_rng(self.seed), self.samples)

    def details(self, args: dict[str, Any]) -> list[dict[str, float]]:
        """Per budget: the share predicted within, the top networks' mean loss, the score."""
        archs = self.sample(args)
        latencies = np.asarray(self.latency(archs), dtype=np.float64)
        losses = np.maximum(np.asarray(self.loss(archs), dtype=np.float64), self.min_loss)
        out = []
        for budget in self.budgets_ms:
            within = np.sort(losses[latencies <= budget])[: self.top]
            p = len(losses[latencies <= budget]) / len(losses) + 1e-5
            top_loss = float(within.mean()) if len(within) else NO_NETWORK_LOSS
            penalty = max(1.0, (LAT_LOSS_T / p) ** LAT_LOSS_A)
            out.append({"budget_ms": float(budget), "share_within": p, "top_loss": top_loss,
                        "score": 1.0 / (penalty * top_loss)})
        return out

    def score_args(self, args: dict[str, Any]) -> float:
        """The Q-T score of any quant space (its space_args)."""
        return float(sum(d["score"] for d in self.details(args)))

    def score(self, genome: Genome) -> float:
        return self.score_args(space_args(genome, self.base_args))


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
    stages = positive_int("stages", stages)
    population = positive_int("population", population)
    tournament = positive_int("tournament", tournament)
    steps = int_at_least("steps", steps, 0)
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
    """A training-free quantization-aware estimate: `proxy` on the fake-quantized network
    (the space's `build`, at the architecture's bit-widths) on `batch` (larger is better)."""
    from predictors.proxies import compute_proxies

    def quality(arch: dict[str, Any]) -> float:
        return compute_proxies(lambda: space_like.build(arch), batch, [proxy], seed=seed)[proxy]

    return quality
